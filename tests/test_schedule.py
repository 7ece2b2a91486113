import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from bench.errors import BenchError
from bench.schedule import NoiseSchedule

pytestmark = pytest.mark.fast


@pytest.mark.parametrize("name, ours", [("linear", NoiseSchedule.linear), ("squaredcos_cap_v2", NoiseSchedule.cosine)])
def test_schedules_match_diffusers(name, ours):
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=name).alphas_cumprod.double()
    assert torch.allclose(ours().alphas_cumprod, ref, rtol=1e-5, atol=1e-12)


def test_alpha_sigma_vp_and_ends():
    s = NoiseSchedule.linear()
    t = torch.arange(-1, 1000, dtype=torch.float64)
    assert torch.allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t))
    assert s.alpha(-1) == 1 and s.sigma(-1) == 0
    assert abs(float(s.alpha(999)) - 0.0064) < 5e-4  # DESIGN.md: alpha at the last step ~ 0.0066
    assert bool((s.log_snr(t[1:])[1:] < s.log_snr(t[1:])[:-1]).all())  # logSNR falls with t


def test_fractional_t_interpolates():
    s = NoiseSchedule.linear()
    mid = s.alpha_bar(10.5)
    assert float(s.alpha_bar(11)) < float(mid) < float(s.alpha_bar(10))


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("K", [1, 2, 7, 10, 64, 1000])
def test_timesteps_match_ddim_scheduler(spacing, K):
    ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    ref.set_timesteps(K)
    assert NoiseSchedule.linear().timesteps(K, spacing) == ref.timesteps.tolist()


def test_timesteps_bad_input():
    s = NoiseSchedule.linear(T=10)
    with pytest.raises(BenchError, match="outside 1..10"):
        s.timesteps(11)
    with pytest.raises(BenchError, match="unknown timestep spacing"):
        s.timesteps(2, "random")
