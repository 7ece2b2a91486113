"""The DDIM baseline: against diffusers' DDIMScheduler, and against the exact ODE map."""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from bench.sampling import ddim_sample
from bench.schedule import NoiseSchedule
from bench.teachers.analytic import exact_ode_map, gaussian_teacher
from bench.teachers.base import Provenance
from bench.teachers.diffusers_teacher import unet_teacher
from conftest import tiny_unet

pytestmark = pytest.mark.fast


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("K", [1, 2, 5, 8, 50])
def test_matches_diffusers_ddim_scheduler(prediction_type, K):
    """Same math as DDIMScheduler (eta 0, trailing, clipped x0 feeding the eps direction).

    K divides T here: for other K, diffusers steps to t - T // K rather than to the next
    timestep of its own list; we step to the next listed timestep.
    """
    unet = tiny_unet().eval()
    kw = dict(num_train_timesteps=1000, beta_schedule="linear", prediction_type=prediction_type,
              clip_sample=True)
    teacher = unet_teacher(unet, DDPMScheduler(**kw), Provenance("test"))
    ref = DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=True, **kw)
    ref.set_timesteps(K)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = noise.clone()
    with torch.no_grad():
        for t in ref.timesteps:
            x = ref.step(unet(x, t).sample, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    ours = ddim_sample(teacher, noise, teacher.schedule.timesteps(K, "trailing"))
    assert torch.allclose(ours, x, atol=2e-5), (ours - x).abs().max()


def test_converges_to_exact_ode_map():
    """On N(mu, diag(s^2)) data DDIM is a first-order ODE solver: error falls ~1/K."""
    sched = NoiseSchedule.linear()
    mu = torch.linspace(-0.5, 0.5, 8, dtype=torch.float64)
    s = torch.linspace(0.1, 0.6, 8, dtype=torch.float64)
    teacher = gaussian_teacher(mu, s, sched)
    eps = torch.randn(256, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = exact_ode_map(eps, mu, s, sched, t_max=999)
    errors = {}
    for K in (4, 16, 64, 250, 1000):
        x = ddim_sample(teacher, eps, sched.timesteps(K, "trailing"))
        errors[K] = float((x - exact).abs().max())
    values = list(errors.values())
    assert all(b < a for a, b in zip(values, values[1:])), errors
    assert errors[1000] < 1e-2, errors
    assert errors[250] / errors[1000] > 2.5, errors  # close to first order (4x)
