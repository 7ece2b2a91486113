"""Deterministic DDIM (Song et al. 2021, eq. 12 with eta = 0), shared by every method.

From t to s < t, with f the teacher's (clipped) x0-prediction and e = (x_t - alpha_t f) / sigma_t:
    x_s = alpha_s f + sigma_s e
The last step goes to s = -1, where alpha = 1 and sigma = 0, so it returns f itself
(diffusers' ``set_alpha_to_one=True``).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from bench.teachers.base import Teacher

SAMPLER_VERSION = 1
"""Bump when the DDIM math below changes: cached references and synthetic data made with the
old sampler are then recomputed (the version is part of their cache key)."""

Sampler = Callable[..., torch.Tensor]
"""A sampler maps noise x_{t_max} = eps (B, *sample_shape) [and class labels] to samples."""


def ddim_step(teacher: Teacher, x_t: torch.Tensor, t, s, cond=None) -> torch.Tensor:
    """One step t -> s; t and s are step indices (ints, or per-row tensors)."""
    x0, eps = teacher.predict(x_t, t, cond)
    alpha_s, sigma_s = teacher.coefficients(s, x_t)
    return alpha_s * x0 + sigma_s * eps


def teacher_sampler(teacher: Teacher, steps: int) -> Sampler:
    """The teacher's own deterministic DDIM with ``steps`` steps (capped at its T): the
    many-step reference behind data-free references, teacher fidelity and synthetic data."""
    timesteps = teacher.schedule.timesteps(min(steps, teacher.T))
    return lambda noise, cond=None: ddim_sample(teacher, noise, timesteps, cond)


@torch.no_grad()
def ddim_sample(teacher: Teacher, noise: torch.Tensor, timesteps: Sequence[int],
                cond: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Run DDIM over ``timesteps`` (decreasing) starting from x_{timesteps[0]} = noise."""
    x = noise
    steps = list(timesteps) + [-1]
    for t, s in zip(steps[:-1], steps[1:]):
        x = ddim_step(teacher, x, t, s, cond)
    return x


def ddim_rule(teacher: Teacher, timesteps: Sequence[int]) -> dict:
    """:func:`ddim_sample` over ``timesteps`` with ``teacher``'s output reading, as a
    self-contained rule (bench.portable runs it without this code)."""
    return {"kind": "ddim", "timesteps": [int(t) for t in timesteps], "prediction_type": teacher.prediction_type,
            "clip_x0": bool(teacher.clip_x0), "data_range": [float(v) for v in teacher.data_range],
            "alphas_cumprod": teacher.schedule.alphas_cumprod.tolist()}
