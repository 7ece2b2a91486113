"""Consistency distillation (Song et al. 2023, "Consistency Models", CD), in LCM's VP form.

The consistency function (CD eq. 5; LCM's form for DDPM-type teachers)
    f_theta(x_t, t) = c_skip(t) x_t + c_out(t) F_theta(x_t, t)
maps any point of a probability-flow ODE trajectory to its end at t_min. F_theta is a copy of
the teacher's network read as an x0 prediction through the teacher's parameterisation (an
eps-teacher's copy gets Salimans & Ho's x and eps heads, as in progressive distillation), and
    c_skip(t) = sigma_data^2 / (u^2 + sigma_data^2),   c_out(t) = u / sqrt(u^2 + sigma_data^2),
    u = timestep_scaling (t - t_min)
(LCM's scalings on the step index, sigma_data = 0.5, scaling 10, as diffusers' LCM training script's
scalings_for_boundary_conditions; CD's appendix C form has
c_out -> sigma_data for a unit-variance network, LCM's c_out -> 1 because F is already an x0
prediction), so c_skip(t_min) = 1 and c_out(t_min) = 0: f(x, t_min) = x exactly (CD eq. 4's
boundary condition).
Our time axis ends at t_min = -1 (alpha = 1, sigma = 0: the data themselves), where LCM's
DDPM axis stops at 0; the boundary is then the data, not a point 1e-4 away from them.

Training (CD Algorithm 2): the ODE grid is t_max = T-1, T-1-k, ... down to the last index
>= 0, then t_min (LCM's skipping grid, k = ``skip``). A row draws x (data, or teacher
samples), a pair of neighbours t_{n+1} > t_n of that grid uniformly (CD: n ~ U[1, N-1]),
x_{t_{n+1}} = alpha x + sigma eps, one teacher ODE step to x^_{t_n} (DDIM, i.e. Euler in the
sigma/alpha variable, or Heun; CD eq. 6, EDM Algorithm 1), and the loss (CD eq. 7, lambda = 1)
    d(f_theta(x_{t_{n+1}}, t_{n+1}), f_{theta^-}(x^_{t_n}, t_n)),
with theta^- <- SG(mu theta^- + (1 - mu) theta) after every optimiser step (CD eq. 8;
mu = ``target_ema`` = 0.95, CD's ImageNet/LSUN value; mu = 0 is iCT's stop-gradient target,
Song & Dhariwal 2023 sec. 3.2). d is L2 or iCT's pseudo-Huber sqrt(||a - b||^2 + c^2) - c with
c = 0.00054 sqrt(dim) (iCT sec. 3.3). CD's best results use LPIPS, which needs ImageNet-trained
VGG weights that cannot be fetched offline: not offered. The student and its target start as
the teacher (openai/consistency_models' cm_train initialises both from the teacher; LCM too).
One iteration: 1 teacher forward per row (2 with Heun, 1 on rows whose step ends at t_min,
where Heun's second evaluation would be at sigma = 0), 1 online forward and backward, 1
target forward without gradients.

Sampling (CD Algorithm 1): x = f(eps, t_max); for each further time tau, re-noise
x_tau = alpha_tau x + sigma_tau z with fresh z and apply f again, so NFE k costs k calls. The
times are LCM's: every (N // k)-th point of the training grid from t_max (k = 2 on T = 1000,
skip 20: 999, 499; k = 4: 999, 759, 519, 279). z must not break the house rule that a sample
depends on its own seed only, so z of row i at step j is drawn from a generator seeded by a
hash of that row's noise and j. Each f is clipped to the data range where the teacher clips x0.
The run's student ships (``distilled()``) as F's network plus bench.portable's ``consistency``
rule, which repeats this sampler; ``fresh_noise`` and ``scalings`` live there, used by both.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from bench.config import option
from bench.method import DistillContext, Distilled, Method, TrainStage
from bench.portable import T_MIN, fresh_noise, scalings  # shipped with the student: one implementation
from bench.registry import METHODS
from bench.sampling import Sampler, ddim_step
from bench.student import TimeMLP, add_x_head
from bench.synthetic import training_data, with_data_cost
from bench.teachers.base import Teacher
from bench.train import TrainConfig, frozen_teacher, train

NFE = (1, 2, 4)


@dataclasses.dataclass(frozen=True)
class ConsistencyConfig(TrainConfig):
    iterations: int = option(2000, "optimiser steps (digits: ~0.25 s each on a busy 2-core CPU at batch 64)")
    eval_every: int = option(250, "quick FID of the one-step student every N steps (0: off)")
    data: str = option("real", "real (the teacher's registered data set) or synthetic (teacher samples, "
                               "generated once, cached, their cost counted)", choices=("real", "synthetic"))
    synthetic_samples: int = option(2000, "synthetic data: number of teacher samples")
    synthetic_steps: int = option(64, "synthetic data: DDIM steps the teacher takes per sample")
    skip: int = option(20, "k: teacher steps between neighbouring times of the training grid (LCM's k = 20 "
                           "for T = 1000: 50 grid times, t_max = T-1 down to t_min)")
    solver: str = option("ddim", "teacher ODE step t_{n+1} -> t_n: ddim (Euler in sigma/alpha, 1 forward) or "
                                 "heun (CD's choice with EDM teachers, 2 forwards; 1 on the last step, which "
                                 "ends at sigma = 0)", choices=("ddim", "heun"))
    target_ema: float = option(0.95, "mu of the target theta^- <- mu theta^- + (1 - mu) theta (CD eq. 8: 0.95 "
                                     "for ImageNet-64/LSUN); 0 is iCT's stop-gradient target")
    loss: str = option("l2", "d: l2 (mean squared error) or huber (iCT's pseudo-Huber sqrt(|a-b|^2 + c^2) - c, "
                             "without iCT's 1/(sigma_{n+1} - sigma_n) weighting: on the exact Gaussian its one-step "
                             "error was 3x L2's at 2000 steps, on digits equal at 500); LPIPS (CD's best) needs "
                             "VGG weights that cannot be fetched offline", choices=("l2", "huber"))
    huber_c: float = option(0.00054, "pseudo-Huber c per sqrt(dimension): c = huber_c sqrt(dim) (iCT sec. 3.3, "
                                     "for data in [-1, 1])")
    sigma_data: float = option(0.5, "sigma_data of c_skip/c_out (CD and LCM: 0.5)")
    timestep_scaling: float = option(10.0, "u = timestep_scaling (t - t_min) in c_skip/c_out: LCM's 10 on the "
                                           "step index (our t_min is -1, the data, not LCM's step 0), so "
                                           "c_skip ~ 0 one grid step above t_min and f ~ F there")
    parameterization: str = option("auto", "F_theta's output: auto (x_and_epsilon for eps-teachers, whose x0 = "
                                           "(x_t - sigma e) / alpha multiplies errors by sigma/alpha at t_max; "
                                           "the teacher's own otherwise), teacher, x_and_epsilon",
                                   choices=("auto", "teacher", "x_and_epsilon"))
    mlp_width: int = option(256, "width of the MLP student (teachers without a network)")

    def __post_init__(self):
        super().__post_init__()
        if self.skip < 1 or self.synthetic_samples < 1 or self.synthetic_steps < 1 or self.mlp_width < 1:
            raise ValueError("skip, synthetic_samples, synthetic_steps and mlp_width must be >= 1")
        if not 0 <= self.target_ema < 1:
            raise ValueError("target_ema must be in [0, 1)")
        if self.huber_c <= 0 or self.sigma_data <= 0 or self.timestep_scaling <= 0:
            raise ValueError("huber_c, sigma_data and timestep_scaling must be > 0")


def training_grid(T: int, skip: int) -> list[int]:
    """t_max = T-1, T-1-skip, ... (the last index >= 0), then t_min = -1: decreasing."""
    return list(range(T - 1, -1, -skip)) + [T_MIN]


def sampling_times(grid: list[int], nfe: int) -> list[int]:
    """LCM's few-step times: every (N // nfe)-th training time from t_max (t_min excluded)."""
    times = grid[:-1]
    return times[::max(1, len(times) // nfe)][:nfe]


class ConsistencyFunction(nn.Module):
    """f_theta(x_t, t) = c_skip(t) x_t + c_out(t) F_theta(x_t, t), and its EMA target theta^-.

    ``student`` reads F_theta (a Teacher around the trainable network: its unclipped x0).
    ``target`` is a frozen copy (None when target_ema = 0: the target is then theta itself
    under stop-gradient); ``model(x, t, target=True)`` evaluates f at theta^-. Both live in this
    module, so a checkpoint holds theta^- and a resumed run continues exactly."""

    def __init__(self, student: Teacher, target_ema: float, sigma_data: float, scaling: float):
        super().__init__()
        self.student = student
        self.mu, self.sigma_data, self.scaling = target_ema, sigma_data, scaling
        self.target = copy.deepcopy(student).requires_grad_(False) if target_ema > 0 else None
        # the optimiser step theta^- already follows (the update is applied lazily, see update_target)
        self.register_buffer("target_step", torch.zeros((), dtype=torch.long))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond=None, target: bool = False) -> torch.Tensor:
        model = self.target if target and self.target is not None else self.student
        F = model.predict(x_t, t, cond)[0]
        c_skip, c_out = scalings(t.detach().double().cpu(), self.sigma_data, self.scaling)
        view = (-1,) + (1,) * (x_t.dim() - 1)
        c_skip = c_skip.to(x_t.device, F.dtype).view(view)
        c_out = c_out.to(x_t.device, F.dtype).view(view)
        return c_skip * x_t + c_out * F

    @torch.no_grad()
    def update_target(self, step: int) -> None:
        """theta^- <- mu theta^- + (1 - mu) theta for the optimiser steps up to ``step`` (CD eq. 8).

        The shared loop has no hook after its optimiser step, so the loss applies the update
        of step s - 1 first thing in step s; the bookkeeping buffer makes it idempotent (a
        step retried after a failure, a resumed run) and keeps it in checkpoints."""
        if self.target is None or step <= int(self.target_step):
            return
        for p_target, p in zip(self.target.parameters(), self.student.parameters()):
            p_target.lerp_(p, 1 - self.mu)
        self.target_step.fill_(step)


def teacher_step(teacher: Teacher, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, solver: str,
                 cond=None) -> tuple[torch.Tensor, int]:
    """x^_s from x_t by one teacher ODE step, and the rows that went through the teacher.

    ddim: bench.sampling.ddim_step (1 forward per row). heun (the solver of CD eq. 6 / EDM
    Algorithm 1 in x~ = x / alpha against sigma~ = sigma / alpha, where the Euler step is DDIM):
    x~_s = x~_t + (sigma~_s - sigma~_t)(e(x_t, t) + e(x'_s, s)) / 2 with x'_s the DDIM point; a
    row whose step ends at t_min (sigma = 0) keeps the Euler step, as EDM's last step does."""
    if solver == "ddim":
        return ddim_step(teacher, x_t, t, s, cond), len(x_t)
    x0, e1 = teacher.predict(x_t, t, cond)
    a_t, s_t = teacher.coefficients(t, x_t)
    a_s, s_s = teacher.coefficients(s, x_t)
    x_s = a_s * x0 + s_s * e1  # the Euler (DDIM) point
    idx = (s > T_MIN).nonzero().flatten()
    if len(idx):
        e2 = teacher.eps(x_s[idx], s[idx], None if cond is None else cond[idx])
        a_t, s_t, a_s, s_s, e1 = a_t[idx], s_t[idx], a_s[idx], s_s[idx], e1[idx]
        x_s = x_s.clone()
        x_s[idx] = a_s * (x_t[idx] / a_t + (s_s / a_s - s_t / a_t) * (e1 + e2) / 2)
    return x_s, len(x_t) + len(idx)


@METHODS.register("consistency", "consistency distillation (Song et al. 2023; LCM's VP form): 1, 2, 4 steps; "
                                  "unconditional teachers only")
class Consistency(Method):
    Config = ConsistencyConfig
    no_conditions = ("consistency distillation of class-conditional teachers is not implemented (the "
                     "registered data sets carry no labels); use boot, dmd2, sid, ddim or solver")

    def __init__(self, teacher, config: ConsistencyConfig, device):
        super().__init__(frozen_teacher(teacher, config), config, device)
        self.grid = training_grid(teacher.T, config.skip)
        if len(self.grid) < 3:
            raise ValueError(f"skip {config.skip} leaves fewer than 2 grid times on a {teacher.T}-step teacher")
        self.model = ConsistencyFunction(self._student(), config.target_ema, config.sigma_data,
                                         config.timestep_scaling).to(device)
        self.ema = self.model
        self.history: list[dict] = []

    def _student(self) -> Teacher:
        """F_theta: a trainable copy of the teacher's network (an MLP for analytic teachers),
        x0 unclipped (clipping would cut the gradient where the prediction leaves the data range)."""
        teacher = self.teacher
        if not any(True for _ in teacher.net.parameters()):
            dim = int(torch.tensor(teacher.sample_shape).prod())
            net = TimeMLP(dim, teacher.T, self.config.mlp_width)
            return teacher.replace(net=net, prediction_type="sample", clip_x0=False, autocast=True)
        net = copy.deepcopy(teacher.net).requires_grad_(True).train()
        kind = self.config.parameterization
        if kind == "auto":
            kind = "x_and_epsilon" if teacher.prediction_type == "epsilon" else "teacher"
        if kind == "x_and_epsilon" and teacher.prediction_type != "x_and_epsilon":
            return teacher.replace(net=add_x_head(net), prediction_type="x_and_epsilon", clip_x0=False,
                                   autocast=True)
        return teacher.replace(net=net, clip_x0=False, autocast=True)

    # -- the loss -------------------------------------------------------------------
    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """d per sample: mean squared error, or pseudo-Huber sqrt(||a - b||^2 + c^2) - c."""
        sq = (a.float() - b.float()).pow(2).flatten(1)
        if self.config.loss == "l2":
            return sq.mean(1)
        c = self.config.huber_c * math.sqrt(sq.shape[1])
        return (sq.sum(1) + c ** 2).sqrt() - c

    def pairs(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(t_{n+1}, t_n): neighbours on the grid, the pair drawn uniformly."""
        grid = torch.tensor(self.grid, dtype=torch.float64)
        i = torch.randint(0, len(grid) - 1, (n,), generator=gen)
        return grid[i], grid[i + 1]

    def target(self, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, int]:
        """SG[f_{theta^-}(x^_s, s)], x^_s one teacher step from (x_t, t), and the teacher's forward rows."""
        with torch.no_grad():
            x_s, rows = teacher_step(self.teacher, x_t, t, s, self.config.solver)
            return self.model(x_s, s, target=True), rows

    def _loss(self, x_data: torch.Tensor):
        def loss(step: int, gen: torch.Generator, rows: Optional[int] = None):
            self.model.update_target(step)
            B = rows or self.config.batch_size
            x = x_data[torch.randint(0, len(x_data), (B,), generator=gen).to(x_data.device)]
            t, s = self.pairs(B, gen)
            eps = torch.randn(x.shape, generator=gen).to(x.device)
            t, s = t.to(self.device), s.to(self.device)
            a, sig = self.teacher.coefficients(t, x)
            x_t = a * x + sig * eps
            target, rows = self.target(x_t, t, s)
            online = self.model(x_t, t)  # the only branch with gradients
            return self.distance(online, target), rows / B

        return loss

    # -- the method contract ----------------------------------------------------------
    def _stage(self, x_data) -> TrainStage:
        return TrainStage(self.model, self._loss(x_data), self.config, frozen=(self.teacher.net,),
                          quick_sampler=lambda model: self._sampler(model, 1))

    def training_stage(self) -> TrainStage:
        """On placeholder data in the data range (the values of x do not change a step's cost)."""
        x = torch.rand((512,) + self.teacher.sample_shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
        return self._stage(x.to(self.device))

    def distill(self, ctx: DistillContext) -> dict[str, float]:
        x_data, data_cost = self._data(ctx)
        self.ema, self.history, cost = train(self._stage(x_data.to(self.device)), ctx)
        return with_data_cost(cost, data_cost)

    def _data(self, ctx: DistillContext) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        return training_data(self.teacher, cfg.data, cfg.synthetic_samples, cfg.synthetic_steps, ctx.seed, ctx.device)

    def max_nfe(self) -> int:
        return len(self.grid) - 1

    def variant(self) -> str:
        """Reports list the data-free run (synthetic) apart from the one trained on data (real)."""
        return self.config.data

    def default_nfe(self) -> tuple[int, ...]:
        return tuple(k for k in NFE if k <= self.max_nfe())

    def _sampler(self, model: ConsistencyFunction, nfe: int) -> Sampler:
        times = sampling_times(self.grid, nfe)
        lo, hi = self.teacher.data_range
        clip = self.teacher.clip_x0

        @torch.no_grad()
        def sample(noise: torch.Tensor, cond=None) -> torch.Tensor:
            x = None
            for j, tau in enumerate(times):
                t = torch.full((len(noise),), float(tau), device=noise.device)
                if x is None:
                    x_tau = noise
                else:
                    a, s = self.teacher.coefficients(t, x)
                    x_tau = a * x + s * fresh_noise(noise, j)
                x = model(x_tau, t)
                if clip:
                    x = x.clamp(lo, hi)
            return x

        return sample

    def sampler(self, nfe: int) -> Sampler:
        self.check_nfe(nfe)
        return self._sampler(self.ema, nfe)

    def distilled(self) -> dict[int, Distilled]:
        """F_theta's network with bench.portable's ``consistency`` rule, as ``_sampler`` samples."""
        F, lo_hi = self.ema.student, [float(v) for v in self.teacher.data_range]
        return {k: Distilled(F.net, {
            "kind": "consistency", "times": sampling_times(self.grid, k), "prediction_type": F.prediction_type,
            "clip_x0": bool(F.clip_x0), "alphas_cumprod": F.schedule.alphas_cumprod.tolist(),
            "sigma_data": float(self.ema.sigma_data), "timestep_scaling": float(self.ema.scaling),
            "clip": bool(self.teacher.clip_x0), "data_range": lo_hi}) for k in self.default_nfe()}

    def save_artifacts(self, out_dir: Path) -> None:
        from bench.artifacts import plot_training
        from bench.files import save_weights

        save_weights(self.ema.student.net, out_dir / "student.safetensors")
        if self.history:
            plot_training(self.history, out_dir / "training_curve.png", "consistency distillation")
