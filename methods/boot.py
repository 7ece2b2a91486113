"""BOOT: data-free distillation by bootstrapping (Gu et al. 2023), in signal space.

The student g_theta(eps, t) predicts y_t = (x_t - sigma_t eps) / alpha_t along the teacher's
DDIM trajectory that starts at x_{t_max} = eps. One teacher DDIM step from t to s < t in y is
    y_s = y_t + (1 - r)(f_phi(x_t, t) - y_t),   r = alpha_t sigma_s / (sigma_t alpha_s)
(DESIGN.md; BOOT eq. 8), so the bootstrapping loss for s = t - delta is
    L_BS = || g_theta(eps, s) - SG[g + (1 - r)(f_phi(alpha_t g + sigma_t eps, t) - g)] ||^2 / (1 - r)^2
with g = g_theta(eps, t) under stop-gradient; a share of every batch instead pins the start
of the trajectory, g_theta(eps, t_max) = y_{t_max} (the boundary term). No data, no EMA target.
One iteration: 1 teacher forward, 2 student forwards (one without grad), 1 backward.
One-step sampling: x = g_theta(eps, -1), where alpha = 1 and y is the sample itself.
Class-conditional teachers: g_theta(eps, t, c) with labels drawn per row; f_phi is the run's
teacher, classifier-free guided at the run's --guidance-scale w (bench/teachers/base.py), so
BOOT distills the guided teacher at that fixed w, and a guided row costs two teacher forwards.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional

import torch

from bench.config import option
from bench.method import DistillContext, Distilled, Method, TrainStage
from bench.registry import METHODS
from bench.sampling import Sampler
from bench.student import Student
from bench.train import TrainConfig, frozen_teacher, train

BOUNDARIES = ("auto", "definition", "teacher")
T_DRAWS = ("trunc", "logsnr", "uniform", "discrete")


@dataclasses.dataclass(frozen=True)
class BOOTConfig(TrainConfig):
    iterations: int = option(3000, "optimiser steps (digits: ~9 min on a 2-core CPU at batch 64)")
    eval_every: int = option(250, "quick FID of the one-step student every N steps (0: off)")
    delta: float = option(20.0, "t - s in teacher steps: the student learns DDIM at this step "
                                "(T/delta = 50 steps); on the exact Gaussian 5 and 50 both did worse")
    t_draw: str = option("trunc", "how t is drawn on [0, t_max] (s = max(t - delta, -1)): trunc (uniform in "
                                  "log-SNR on [lambda(t_max - delta), lambda(0)]; the first delta-window, one "
                                  "teacher DDIM step whatever log-SNR it spans, gets the share of one "
                                  "delta-step and its rows bootstrap from t_max), logsnr (uniform in log-SNR "
                                  "on [lambda(t_max), lambda(0)]: on schedules with a capped last beta it "
                                  "spends ~40% of rows in that window), uniform (in t) or discrete (integers)",
                           choices=T_DRAWS)
    boundary: str = option("auto", "target of g(eps, t_max): definition (y from x = eps), teacher "
                                   "(f_phi(eps, t_max), for ~zero terminal SNR) or auto (pick by r)",
                           choices=BOUNDARIES)
    boundary_fraction: float = option(0.125, "share of each batch spent on the boundary term (one "
                                             "row in 8 anchors the start; the rest bootstrap)")
    boundary_weight: float = option(1.0, "weight of the boundary rows' loss")
    t_max: Optional[int] = option(None, "first step of the trajectory (default: T-1, as trailing DDIM)")
    mlp_width: int = option(256, "width of the MLP student (teachers without a network)")

    def __post_init__(self):
        super().__post_init__()
        if self.delta < 1:
            raise ValueError("delta must be >= 1 teacher step (the teacher is never queried below t = 0)")
        if not 0 < self.boundary_fraction < 1:
            raise ValueError("boundary_fraction must be in (0, 1)")
        if self.mlp_width < 1 or self.boundary_weight < 0:
            raise ValueError("mlp_width must be >= 1 and boundary_weight >= 0")


@METHODS.register("boot", "BOOT: data-free one-step distillation by bootstrapping (Gu et al. 2023); "
                           "class-conditional teachers: distills the teacher guided at the run's --guidance-scale")
class BOOT(Method):
    Config = BOOTConfig

    def __init__(self, teacher, config: BOOTConfig, device):
        super().__init__(frozen_teacher(teacher, config), config, device)
        self.t_max = teacher.T - 1 if config.t_max is None else config.t_max
        if not config.delta <= self.t_max <= teacher.T - 1:
            raise ValueError(f"t_max must be in [delta, {teacher.T - 1}]")
        self.student = Student(teacher, config.mlp_width, self.t_max).to(device)
        self.ema = self.student
        self.history: list[dict] = []
        self.boundary_mode = config.boundary
        if config.boundary == "auto":  # r of the first unit step: ~0 means y_{t_max} is forgotten
            first = torch.tensor([float(self.t_max)])
            self.boundary_mode = "teacher" if float(self.ratio(first, first - 1)) < 0.5 else "definition"
        self._trunc_cdf = None  # cumulative step weights of t_draw=trunc, from 0
        if config.t_draw == "trunc":
            self._trunc_cdf = torch.cat([torch.zeros(1, dtype=torch.float64), self._trunc_weights().cumsum(0)])

    # -- the math -------------------------------------------------------------------
    def ratio(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """r = alpha_t sigma_s / (sigma_t alpha_s), in float64 (1 - r is a small difference)."""
        sch = self.teacher.schedule
        t, s = t.double().cpu(), s.double().cpu()
        return (sch.alpha(t) * sch.sigma(s) / (sch.sigma(t) * sch.alpha(s))).to(self.device)

    def boundary_target(self, eps: torch.Tensor, cond) -> torch.Tensor:
        """y_{t_max}: by definition alpha eps / (1 + sigma) (= (1 - sigma) eps / alpha, stably),
        or the teacher's f_phi(eps, t_max) where its first DDIM step forgets y_{t_max} anyway."""
        t = torch.full((len(eps),), float(self.t_max))
        if self.boundary_mode == "teacher":
            return self.teacher.x0(eps, t.to(eps.device), cond)
        a, s = self.teacher.coefficients(t, eps)
        return a * eps / (1 + s)

    def bootstrap_target(self, eps, t, s, cond):
        """SG[g + (1 - r)(f_phi(alpha_t g + sigma_t eps, t) - g)] and 1 - r: one DDIM step in y."""
        with torch.no_grad():
            g = self.student(eps, t, cond)
            a, sig = self.teacher.coefficients(t, eps)
            f = self.teacher.x0(a * g + sig * eps, t, cond)
            one_minus_r = (1 - self.ratio(t, s)).view((-1,) + (1,) * (eps.dim() - 1))
            return (g + one_minus_r.to(g.dtype) * (f - g)).detach(), one_minus_r

    def loss(self, it: int, gen: torch.Generator, rows: Optional[int] = None) -> tuple[torch.Tensor, float]:
        """Per-sample losses of one batch: boundary rows first, bootstrapping rows after."""
        cfg, B = self.config, rows or self.config.batch_size
        nb = max(1, math.ceil(B * cfg.boundary_fraction))
        eps = torch.randn((B,) + self.teacher.sample_shape, generator=gen).to(self.device)
        cond = self._classes(B, gen)
        t = self.draw_t(B - nb, gen)
        # s stops at -1 (alpha = 1), so the end of the trajectory, where one-step sampling
        # reads the student, is trained directly rather than extrapolated to
        s = (t - cfg.delta).clamp(min=-1)
        if cfg.t_draw == "trunc":  # read g(eps, t) only where it is trained: t_max or some row's s
            t = torch.where(t > self.t_max - cfg.delta, torch.full_like(t, float(self.t_max)), t)
        t, s = t.to(self.device), s.to(self.device)
        c_bs = None if cond is None else cond[nb:]
        target, one_minus_r = self.bootstrap_target(eps[nb:], t, s, c_bs)
        with torch.no_grad():
            y_max = self.boundary_target(eps[:nb], None if cond is None else cond[:nb])
        s_all = torch.cat([torch.full((nb,), float(self.t_max), device=self.device), s])
        g_s = self.student(eps, s_all, cond)  # the only branch with gradients
        err = (g_s.float() - torch.cat([y_max, target]).float()).pow(2).flatten(1).mean(1)
        weight = torch.cat([torch.full((nb,), cfg.boundary_weight, dtype=torch.float64),
                            one_minus_r.flatten().cpu() ** -2]).to(err.device, torch.float32)
        teacher_rows = B if self.boundary_mode == "teacher" else B - nb
        return weight * err, self.teacher.forwards_per_row * teacher_rows / B

    def draw_t(self, n: int, gen: torch.Generator) -> torch.Tensor:
        lo, hi = 0.0, float(self.t_max)
        u = torch.rand(n, generator=gen, dtype=torch.float64)
        if self.config.t_draw == "logsnr":
            sch = self.teacher.schedule
            l_lo, l_hi = sch.log_snr(torch.tensor(hi)), sch.log_snr(torch.tensor(lo))
            return sch.t_of_log_snr(l_lo + u * (l_hi - l_lo)).clamp(lo, hi)
        if self.config.t_draw == "trunc":  # piecewise uniform in t; step k -> k+1 has weight w_k
            cum = self._trunc_cdf
            target = u * cum[-1]
            k = (torch.searchsorted(cum, target, right=True) - 1).clamp(0, len(cum) - 2)
            return (k + (target - cum[k]) / (cum[k + 1] - cum[k])).clamp(lo, hi)
        t = lo + u * (hi - lo)
        return t.round() if self.config.t_draw == "discrete" else t

    def _trunc_weights(self) -> torch.Tensor:
        """Weights of the unit steps [k, k+1], k < t_max, for t_draw=trunc. The student learns
        DDIM at step delta, so it resolves nothing inside one delta-window, and the first window
        (t_max - delta, t_max] is one teacher DDIM step from t_max however much log-SNR it spans
        (12.9 of 29.9 on digits' cosine, whose capped last beta drops it by 6.9 in one step).
        Below it: the step's log-SNR drop (uniform in log-SNR on [lambda(t_max - delta), lambda(0)],
        exactly as logsnr there); the first window: the share of one delta-step, delta / t_max."""
        d = self.config.delta
        lam = self.teacher.schedule.log_snr(torch.arange(self.t_max + 1, dtype=torch.float64))
        k = torch.arange(self.t_max, dtype=torch.float64)
        below = (self.t_max - d - k).clamp(0, 1)  # the part of step k below t_max - delta
        w = (lam[:-1] - lam[1:]).clamp(min=0) * below
        share = d / self.t_max
        if share >= 1 or float(w.sum()) <= 0:
            return torch.ones(self.t_max, dtype=torch.float64)
        w = w + (1 - below) * (share / (1 - share)) * float(w.sum()) / d
        return torch.where(w > 0, w, torch.full_like(w, 1e-12 * float(w.max())))  # no empty steps

    def _classes(self, n: int, gen: torch.Generator):
        if not self.teacher.num_classes:
            return None
        return torch.randint(0, self.teacher.num_classes, (n,), generator=gen).to(self.device)

    # -- the method contract ----------------------------------------------------------
    def training_stage(self) -> TrainStage:
        # the teacher runs in every step, so compile/channels_last apply to it as well
        return TrainStage(self.student, self.loss, self.config, frozen=(self.teacher.net,),
                          quick_sampler=self._one_step)

    def distill(self, ctx: DistillContext) -> dict[str, float]:
        self.ema, self.history, cost = train(self.training_stage(), ctx)
        return cost

    def max_nfe(self) -> int:
        return 1

    def _one_step(self, student) -> Sampler:
        def sample(noise: torch.Tensor, cond=None) -> torch.Tensor:
            t = torch.full((len(noise),), -1.0, device=noise.device)
            return student(noise, t, cond)

        return sample

    def sampler(self, nfe: int) -> Sampler:
        self.check_nfe(nfe)
        if not self.config.compile:
            return self._one_step(self.ema)
        if getattr(self, "_fast", (None,))[0] is not self.ema:  # compile once per student
            from bench.accel import compiled_sampler

            self._fast = (self.ema, compiled_sampler(self.ema, self.device))
        return self._one_step(self._fast[1])

    def distilled(self) -> dict[int, Distilled]:
        """x = g_theta(eps, -1) = c_skip eps + c_out net(eps, -1) (bench.student.Student)."""
        s = self.ema
        return {1: Distilled(s.net, {"kind": "one_step", "t": -1.0, "c_skip": float(s.c_skip),
                                     "c_out": float(s.c_out)})}

    def save_artifacts(self, out_dir: Path) -> None:
        from bench.artifacts import plot_training
        from bench.files import save_weights

        save_weights(self.ema, out_dir / "student.safetensors")
        if self.history:
            plot_training(self.history, out_dir / "training_curve.png", "BOOT")
