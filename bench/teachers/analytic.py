"""Exact teachers: data whose posterior mean E[x | x_t] has a closed form (DESIGN.md).

For data N(mu, diag(s^2)):  E[x | x_t] = mu + alpha_t s^2 (x_t - alpha_t mu) / (alpha_t^2 s^2 + sigma_t^2),
and the probability-flow ODE keeps z = (x_t - alpha_t mu) / sqrt(alpha_t^2 s^2 + sigma_t^2) constant,
so the ideal noise-to-data map is known. A mixture's posterior mean is the responsibility-
weighted sum of its components' posterior means. These teachers predict x0 ('sample').
"""
from __future__ import annotations

import math

import torch
from torch import nn

from bench.schedule import NoiseSchedule
from bench.teachers.base import Provenance, Teacher


class GaussianMixtureDenoiser(nn.Module):
    """Posterior mean of x given x_t for a diagonal Gaussian mixture (K components, D dims)."""

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor,
                 schedule: NoiseSchedule):
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(means, dtype=torch.float64))  # (K, D)
        self.register_buffer("s2", torch.as_tensor(stds, dtype=torch.float64) ** 2)  # (K, D)
        self.register_buffer("log_w", torch.log(torch.as_tensor(weights, dtype=torch.float64)))
        self.schedule = schedule

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        x = x_t.double().flatten(1)[:, None, :]  # (B, 1, D)
        a = self.schedule.alpha(t.double().cpu()).to(x.device)[:, None, None]
        s = self.schedule.sigma(t.double().cpu()).to(x.device)[:, None, None]
        var = a ** 2 * self.s2 + s ** 2  # (B, K, D): variance of x_t under component k
        resid = x - a * self.mu
        log_lik = -0.5 * (resid ** 2 / var + torch.log(2 * math.pi * var)).sum(-1)
        resp = torch.softmax(self.log_w + log_lik, dim=-1)  # (B, K)
        if cond is not None:  # class-conditional: the class is the component; label K: no class
            K, c = resp.shape[-1], cond.long().to(resp.device)
            one_hot = torch.nn.functional.one_hot(c.clamp(max=K - 1), K).to(resp.dtype)
            resp = torch.where((c < K)[:, None], one_hot, resp)
        post = self.mu + a * self.s2 * resid / var  # (B, K, D) per-component E[x | x_t, k]
        return (resp[..., None] * post).sum(1).view_as(x_t).to(x_t.dtype)


def gaussian_teacher(mu: torch.Tensor, std: torch.Tensor, schedule: NoiseSchedule | None = None,
                     name: str = "gaussian") -> Teacher:
    """Teacher for data N(mu, diag(std^2)) in any dimension."""
    mu, std = torch.as_tensor(mu, dtype=torch.float64), torch.as_tensor(std, dtype=torch.float64)
    return mixture_teacher(mu[None], std.expand_as(mu)[None], torch.ones(1), schedule, name)


def mixture_teacher(means, stds, weights, schedule: NoiseSchedule | None = None,
                    name: str = "mixture", conditional: bool = False) -> Teacher:
    """Teacher for a diagonal Gaussian mixture; ``conditional``: class c is component c."""
    schedule = schedule or NoiseSchedule.linear()
    net = GaussianMixtureDenoiser(means, stds, weights, schedule)
    return Teacher(net, schedule, "sample", (net.mu.shape[1],), Provenance("analytic", name),
                   clip_x0=False, is_image=False, num_classes=len(weights) if conditional else None)


def exact_ode_map(eps: torch.Tensor, mu, std, schedule: NoiseSchedule, t_max: int) -> torch.Tensor:
    """Where the probability-flow ODE takes x_{t_max} = eps at alpha = 1 (Gaussian data)."""
    mu = torch.as_tensor(mu, dtype=torch.float64)
    std = torch.as_tensor(std, dtype=torch.float64)
    a, s = schedule.alpha(t_max), schedule.sigma(t_max)
    z = (eps.double() - a * mu) / torch.sqrt(a ** 2 * std ** 2 + s ** 2)
    return mu + std * z


def gmm2d_params(k: int = 8, radius: float = 0.8, std: float = 0.05):
    """Means, stds, weights of ``gmm2d``: k equal Gaussians evenly spaced on a circle."""
    angle = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return means, torch.full_like(means, std), torch.full((k,), 1.0 / k, dtype=torch.float64)


def sample_mixture(means, stds, weights, n: int, generator: torch.Generator) -> torch.Tensor:
    """Exact i.i.d. draws from the mixture (reference data for the analytic teachers)."""
    k = torch.multinomial(torch.as_tensor(weights, dtype=torch.float64), n, True, generator=generator)
    noise = torch.randn(n, means.shape[1], generator=generator, dtype=torch.float64)
    return means[k] + stds[k] * noise
