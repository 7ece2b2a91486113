"""Analytic teachers against independent oracles (closed forms, grid integration with scipy)."""
import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from bench.schedule import NoiseSchedule
from bench.teachers import load_teacher
from bench.teachers.analytic import gaussian_teacher, gmm2d_params, mixture_teacher

pytestmark = pytest.mark.fast


def test_gaussian_posterior_mean_closed_form():
    sched = NoiseSchedule.linear()
    mu = torch.tensor([0.3, -0.5, 1.0], dtype=torch.float64)
    s = torch.tensor([0.2, 0.5, 1.5], dtype=torch.float64)
    teacher = gaussian_teacher(mu, s, sched)
    x_t = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in (0, 100, 500, 999):
        a, sig = sched.alpha(t), sched.sigma(t)
        expected = mu + a * s ** 2 * (x_t - a * mu) / (a ** 2 * s ** 2 + sig ** 2)
        x0, eps = teacher.predict(x_t, t)
        assert torch.allclose(x0.double(), expected, atol=1e-10)
        assert torch.allclose(a * x0 + sig * eps, x_t, atol=1e-9)  # (x0, eps) consistent with x_t


@pytest.mark.parametrize("t", [200, 500, 800])
def test_gmm2d_posterior_mean_by_grid_integration(t):
    """E[x | x_t] = int x p(x) N(x_t; a x, s^2 I) dx / Z, integrated on a fine grid."""
    sched = NoiseSchedule.linear()
    means, stds, weights = gmm2d_params()
    teacher = mixture_teacher(means, stds, weights, sched)
    a, s = float(sched.alpha(t)), float(sched.sigma(t))
    g = np.linspace(-1.3, 1.3, 521)
    X, Y = np.meshgrid(g, g, indexing="ij")
    grid = np.stack([X.ravel(), Y.ravel()], 1)
    prior = sum(float(w) * multivariate_normal(m.numpy(), np.diag(sd.numpy() ** 2)).pdf(grid)
                for m, sd, w in zip(means, stds, weights))
    rng = np.random.default_rng(t)
    for x_t in rng.normal(size=(5, 2)) * 0.8:
        lik = multivariate_normal(a * np.zeros(2), s ** 2 * np.eye(2)).pdf(x_t - a * grid)
        w = prior * lik
        expected = (grid * w[:, None]).sum(0) / w.sum()
        got = teacher.x0(torch.tensor(x_t[None]), t)[0].numpy()
        assert np.allclose(got, expected, atol=2e-4), (got, expected)


def test_registered_analytic_teachers_have_reference():
    for name, dim in (("gaussian", 16), ("gmm2d", 2)):
        teacher = load_teacher(name)
        assert teacher.sample_shape == (dim,) and teacher.features == "points"
        ref = teacher.dataset()
        assert ref.shape == (20_000, dim) and torch.equal(ref, teacher.dataset())  # fixed seed
    radius = load_teacher("gmm2d").dataset().norm(dim=1)
    assert abs(float(radius.mean()) - 0.8) < 0.01
