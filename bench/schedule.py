"""Discrete VP noise schedules: x_t = alpha_t x + sigma_t eps, alpha_t^2 + sigma_t^2 = 1.

Time is the teacher's step index t in [0, T-1] (as a float tensor, so analytic teachers and
interpolation work too). ``alpha_bar[t]`` is diffusers' ``alphas_cumprod``; alpha_t is its
square root. Everything is kept in float64 and cast at use, because 1 - r and SNR ratios
near the ends of the schedule lose digits in float32.
"""
from __future__ import annotations

import math

import torch

from bench.errors import BenchError

SPACINGS = ("trailing", "leading", "linspace")


class NoiseSchedule:
    """alpha_t, sigma_t on a grid of T steps, plus the 'final' alpha after the last step (1)."""

    def __init__(self, alphas_cumprod: torch.Tensor, name: str = "custom"):
        a = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if a.numel() < 2 or not bool(((a > 0) & (a < 1 + 1e-12)).all()):
            raise ValueError("alphas_cumprod must hold at least 2 values in (0, 1]")
        if not bool((a[1:] <= a[:-1]).all()):
            raise ValueError("alphas_cumprod must be non-increasing (logSNR falls as t grows)")
        self.alphas_cumprod = a
        self.name = name

    @property
    def T(self) -> int:
        return self.alphas_cumprod.numel()

    # -- constructors -----------------------------------------------------------------
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """DDPM's linear beta schedule (Ho et al. 2020), as in diffusers' 'linear'."""
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        return cls(torch.cumprod(1 - betas, 0), name="linear")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        """Nichol & Dhariwal (2021) eq. 17, as diffusers' 'squaredcos_cap_v2'."""
        f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)],
                             dtype=torch.float64)
        return cls(torch.cumprod(1 - betas, 0), name="cosine")

    @classmethod
    def from_diffusers(cls, scheduler) -> "NoiseSchedule":
        """Adapter for any diffusers scheduler that exposes ``alphas_cumprod``."""
        cfg = scheduler.config
        return cls(scheduler.alphas_cumprod.double(), name=str(cfg.get("beta_schedule", "custom")))

    # -- lookups ----------------------------------------------------------------------
    def alpha_bar(self, t: torch.Tensor | float) -> torch.Tensor:
        """alpha_bar at (possibly fractional) t; t = -1 means 'after the last step' (1.0)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        padded = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        u = (t + 1).clamp(0, self.T)
        lo = u.floor().long().clamp(max=self.T - 1)
        w = u - lo
        return padded[lo] * (1 - w) + padded[(lo + 1).clamp(max=self.T)] * w

    def alpha(self, t) -> torch.Tensor:
        return self.alpha_bar(t).sqrt()

    def sigma(self, t) -> torch.Tensor:
        return (1 - self.alpha_bar(t)).clamp(min=0).sqrt()

    def log_snr(self, t) -> torch.Tensor:
        ab = self.alpha_bar(t)
        return torch.log(ab) - torch.log1p(-ab)

    def t_of_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """Inverse of log_snr on [0, T-1] (piecewise linear between integer steps)."""
        grid = self.log_snr(torch.arange(self.T, dtype=torch.float64))  # decreasing in t
        lam = torch.as_tensor(lam, dtype=torch.float64).clamp(grid[-1], grid[0])
        idx = torch.searchsorted(-grid, -lam).clamp(1, self.T - 1)  # first grid point <= lam
        lo, hi = grid[idx - 1], grid[idx]
        return (idx - 1) + (lo - lam) / (lo - hi)

    def timesteps(self, K: int, spacing: str = "trailing") -> list[int]:
        """K decreasing step indices for a K-step sampler, as diffusers' DDIMScheduler.

        'trailing' (Lin et al. 2024) starts at T-1 and is the right choice for few steps;
        'leading' is DDIM's original spacing and never visits the noisiest step.
        """
        if not 1 <= K <= self.T:
            raise BenchError(f"number of steps {K} is outside 1..{self.T} for this teacher")
        if spacing == "trailing":
            ts = torch.round(torch.arange(self.T, 0, -self.T / K, dtype=torch.float64)) - 1
        elif spacing == "leading":
            ts = torch.arange(0, K, dtype=torch.float64).flip(0) * (self.T // K)
        elif spacing == "linspace":
            ts = torch.linspace(0, self.T - 1, K, dtype=torch.float64).round().flip(0)
        else:
            raise BenchError(f"unknown timestep spacing {spacing!r}; known: {', '.join(SPACINGS)}")
        return [int(v) for v in ts]
