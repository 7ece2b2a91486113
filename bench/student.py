"""Students: networks g_theta(eps, t) that map the noise itself to a point of the trajectory.

Where the teacher has a network (diffusers UNet) the student is a trainable copy of it, so it
starts from the teacher's weights, and its output is read in the teacher's parameterisation
with x_t := eps. Analytic teachers have no weights; their students are small MLPs that
predict y directly.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from bench.teachers.base import Teacher


class TimeMLP(nn.Module):
    """MLP student for vector data: [x, sinusoidal(t / T)] -> prediction of the same size."""

    def __init__(self, dim: int, T: int, width: int = 256, depth: int = 3, freqs: int = 16):
        super().__init__()
        self.T, self.freqs = T, freqs
        layers, d_in = [], dim + 2 * freqs
        for _ in range(depth):
            layers += [nn.Linear(d_in, width), nn.SiLU()]
            d_in = width
        self.body = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        u = (t.float() + 1) / (self.T + 1)  # t in [-1, T-1] -> (0, 1]
        k = torch.arange(self.freqs, device=x.device, dtype=torch.float32)
        ang = u[:, None] * math.pi * (2.0 ** (k / 2))[None]  # periods from 2 down to ~1/90 of the range
        return self.body(torch.cat([x.flatten(1), ang.sin(), ang.cos()], dim=1)).view_as(x)


class Student(nn.Module):
    """g_theta(eps, t) -> y_t = (x_t - sigma_t eps) / alpha_t of the teacher's DDIM trajectory."""

    def __init__(self, teacher: Teacher, width: int = 256):
        super().__init__()
        if any(True for _ in teacher.net.parameters()):
            self.net = copy.deepcopy(teacher.net).requires_grad_(True).train()
            self.param = teacher.prediction_type
        else:
            dim = int(torch.tensor(teacher.sample_shape).prod())
            self.net = TimeMLP(dim, teacher.T, width)
            self.param = "sample"
        self.schedule = teacher.schedule
        self._coefficients = teacher.coefficients

    def forward(self, eps: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        out = self.net(eps, t.float(), cond)
        if self.param == "sample":
            return out
        a, s = self._coefficients(t, eps)
        a, s = a.to(out.dtype), s.to(out.dtype)
        if self.param == "v_prediction":  # x0 = alpha x_t - sigma v, at x_t = eps
            return a * eps - s * out
        return (eps - s * out) / a  # epsilon: f = (x_t - sigma e) / alpha
