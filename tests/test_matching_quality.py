"""DMD2 and SiD on exact teachers with MLP generators: what one step reaches, at pinned bounds.

The fake score of an analytic teacher is an MLP from scratch (there is no network to copy),
which is the hard case: on digits f_psi starts as the teacher itself. Bounds are the measured
values (seed 0) with some room; docs/methods.md has the figures.
"""
import pytest
import torch

from bench import config as cfgs
from bench.method import DistillContext
from bench.teachers import load_teacher
from bench.teachers.analytic import gmm2d_params
from methods.dmd2 import DMD2
from methods.sid import SiD

CPU = torch.device("cpu")


def _trained(cls, teacher, tmp_path, **overrides):
    torch.manual_seed(0)
    m = cls(teacher, cfgs.replace(cls.Config(), {"checkpoint_every": 0, "eval_every": 0, **overrides}), CPU)
    m.distill(DistillContext(log=lambda *_: None, device=CPU, seed=0, workdir=tmp_path, progress=False))
    return m


@pytest.mark.parametrize("cls,overrides", [(DMD2, {"lr": 1e-3}), (SiD, {"lr": 1e-4, "fake_updates": 5})])
def test_gmm2d_every_mode_gets_at_least_half_its_share(cls, overrides, tmp_path):
    """8 modes, 2000 one-step samples: each mode's count above half its share (measured: DMD2 207..280,
    SiD 136..383 of 250 at 1000 steps). One step is not yet sharper than DDIM-10 here (within 3 std
    of a mode: DMD2 0.19-0.28, SiD 0.11, DDIM-10 0.36), unlike BOOT: the MLP fake score limits it."""
    m = _trained(cls, load_teacher("gmm2d"), tmp_path, iterations=1000, batch_size=64, **overrides)
    eps = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        x = m.sampler(1)(eps).float()
    nearest = torch.cdist(x, gmm2d_params()[0].float()).min(1)
    counts = torch.bincount(nearest.indices, minlength=8)
    assert bool((counts > 2000 / 8 / 2).all()), counts
    assert float((nearest.values < 0.15).float().mean()) > 0.05  # the modes are hit, not just the sectors


@pytest.mark.parametrize("cls,overrides,std_bound", [
    (DMD2, {"lr": 1e-3}, 0.2),  # measured 0.157 (0.059 at 1000 steps): reverse KL narrows first
    (SiD, {"lr": 3e-4, "fake_updates": 5}, 0.1),  # measured 0.070
])
def test_gaussian_mean_and_std_match_the_data(cls, overrides, std_bound, tmp_path):
    """16-D N(mu, diag(s^2)), s in [0.1, 0.4], 500 steps at batch 256: the per-dimension mean of 4000
    one-step samples within 0.01 RMS of mu (measured: DMD2 0.0016, SiD 0.0045), the std within
    the bound of s."""
    teacher = load_teacher("gaussian")
    m = _trained(cls, teacher, tmp_path, iterations=500, batch_size=256, **overrides)
    eps = torch.randn(4000, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        x = m.sampler(1)(eps).float()
    mu, std = teacher.net.mu[0].float(), teacher.net.s2[0].float().sqrt()
    assert float((x.mean(0) - mu).pow(2).mean().sqrt()) < 0.01
    assert float((x.std(0) - std).pow(2).mean().sqrt()) < std_bound
