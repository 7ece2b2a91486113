"""Progressive distillation (Salimans & Ho 2022): halve the number of DDIM steps per round.

The student starts as the teacher. In a round with N student steps on the trailing grid,
for x_t = alpha_t x + sigma_t eps two teacher DDIM steps t -> t' -> t'' (on the 2N grid) give
x_{t''}, and the student's x0-target is (Salimans & Ho, Algorithm 2)
    x~ = (x_{t''} - (sigma_{t''} / sigma_t) x_t) / (alpha_{t''} - (sigma_{t''} / sigma_t) alpha_t),
so one student DDIM step from t lands exactly on x_{t''}. The loss is max(SNR_t, 1) ||x^ - x~||^2
(truncated SNR weighting). After the round the student becomes the teacher.
It needs x: ``data=real`` uses the teacher's registered data set; ``data=synthetic`` samples
the teacher once with K DDIM steps, caches the samples and counts their cost in the run.
A teacher without a network (the analytic ones) is first imitated by an MLP, fitted to its x0
prediction on the first round's grid with the same weighting (a stage of its own, "round
``start_steps``"); the rounds then halve that MLP as usual.

The student's output parameterisation (Salimans & Ho sec. 4): an eps-prediction student reads
x0 = (x_t - sigma eps) / alpha, which multiplies its error by sigma / alpha (~157 at the first
step of a DDPM schedule); with one or two steps left, that first step *is* the sample, and
eps-prediction breaks down. So an eps-teacher's students predict x and eps with two heads and
merge them as x0 = sigma^2 x~ + alpha (x_t - sigma eps~) (``x_and_epsilon``, the paper's "both"
variant), starting from the teacher's weights (the eps head is the teacher's, the new x head
starts at zero; bench.student.add_x_head). x0-, v- and analytic teachers keep their own output.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Optional

import torch

from bench.config import option
from bench.errors import BenchError
from bench.files import save_weights
from bench.method import DistillContext, Distilled, Method, TrainStage
from bench.registry import METHODS
from bench.sampling import Sampler, ddim_rule, ddim_sample, ddim_step
from bench.student import TimeMLP, add_x_head
from bench.synthetic import training_data, with_data_cost
from bench.teachers.base import Teacher
from bench.train import TrainConfig, Trainer, Totals, frozen_teacher


@dataclasses.dataclass(frozen=True)
class ProgressiveConfig(TrainConfig):
    iterations: int = option(400, "optimiser steps per round")
    start_steps: int = option(64, "the teacher's step count the first round halves (power of 2 times end)")
    end_steps: int = option(1, "the last round's student step count")
    data: str = option("real", "real (the teacher's registered data set) or synthetic (teacher samples)",
                       choices=("real", "synthetic"))
    synthetic_samples: int = option(2000, "synthetic data: number of teacher samples")
    synthetic_steps: int = option(64, "synthetic data: DDIM steps the teacher takes per sample")
    lr: float = option(1e-4, "learning rate (students start from the previous round's weights)")
    fit_iterations: int = option(2000, "teachers without a network (analytic): steps fitting an MLP to "
                                       "the teacher's x0 prediction before the first round")
    fit_lr: float = option(1e-3, "learning rate of that fit (the MLP starts from random weights)")
    mlp_width: int = option(256, "width of the MLP student (teachers without a network)")
    parameterization: str = option("auto", "the students' output: auto (x_and_epsilon for eps-teachers, "
                                           "as Salimans & Ho advise; the teacher's own otherwise), "
                                           "teacher (keep the teacher's), x_and_epsilon",
                                   choices=("auto", "teacher", "x_and_epsilon"))

    def __post_init__(self):
        super().__post_init__()
        ratio = self.start_steps // max(self.end_steps, 1)
        if self.end_steps < 1 or ratio < 2 or ratio & (ratio - 1) or ratio * self.end_steps != self.start_steps:
            raise ValueError("start_steps must be end_steps times a power of two (>= 2)")
        if min(self.synthetic_samples, self.synthetic_steps, self.mlp_width) < 1 or self.fit_iterations < 0 \
                or self.fit_lr <= 0:
            raise ValueError("synthetic_samples, synthetic_steps and mlp_width must be >= 1, fit_iterations >= 0 "
                             "and fit_lr > 0")


def two_step_target(teacher: Teacher, x_t, t, t_mid, t_next) -> torch.Tensor:
    """x~ for one student step t -> t_next from two teacher DDIM steps t -> t_mid -> t_next."""
    x_next = ddim_step(teacher, ddim_step(teacher, x_t, t, t_mid), t_mid, t_next)
    a_t, s_t = teacher.coefficients(t, x_t)
    a_n, s_n = teacher.coefficients(t_next, x_t)
    ratio = s_n / s_t
    return (x_next - ratio * x_t) / (a_n - ratio * a_t)


@dataclasses.dataclass
class Round:
    """A finished round: its student (EMA, as a sampler and the next round's teacher) and the
    distillation's cost up to its end (None for a round reloaded on resume)."""

    steps: int
    student: Teacher
    totals: Optional[Totals]


@METHODS.register("progressive", "progressive distillation (Salimans & Ho 2022): halve DDIM steps per round; "
                                  "unconditional teachers only")
class Progressive(Method):
    Config = ProgressiveConfig
    no_conditions = ("progressive distillation of class-conditional teachers is not implemented (its "
                     "training draws carry no labels); use boot, dmd2, sid, ddim or solver")

    def __init__(self, teacher, config: ProgressiveConfig, device):
        super().__init__(frozen_teacher(teacher, config), config, device)
        if config.start_steps > teacher.T:
            raise ValueError(f"start_steps {config.start_steps} exceeds the teacher's {teacher.T} steps")
        self.needs_fit = not any(True for _ in teacher.net.parameters())  # analytic: no weights to copy
        self.rounds: dict[int, Round] = {}  # student step count -> its round
        self.history: list[dict] = []

    # -- the math -------------------------------------------------------------------
    def _noisy_batch(self, x_data, grid: torch.Tensor, gen, rows: Optional[int]):
        """``rows`` x (None: batch_size) from the data, t from ``grid``, x_t = alpha_t x + sigma_t eps;
        returns (index, t, a, s, x_t)."""
        B = rows or self.config.batch_size
        x = x_data[torch.randint(0, len(x_data), (B,), generator=gen).to(x_data.device)]
        idx = torch.randint(0, len(grid), (B,), generator=gen)
        eps = torch.randn(x.shape, generator=gen).to(x.device)
        t = grid[idx]
        a, s = self.teacher.coefficients(t, x)
        return idx, t, a, s, a * x + s * eps

    @staticmethod
    def _weighted(x0, target, a, s) -> torch.Tensor:
        """max(SNR_t, 1) ||x0 - target||^2 per sample (truncated SNR weighting, Salimans & Ho sec. 4)."""
        snr = (a ** 2 / s ** 2).flatten().float()
        return snr.clamp(min=1.0) * (x0.float() - target.float()).pow(2).flatten(1).mean(1)

    def _round_loss(self, teacher: Teacher, student: Teacher, x_data, n: int):
        grid, fine = teacher.schedule.timesteps(n), teacher.schedule.timesteps(2 * n)
        t_grid = torch.tensor(grid, dtype=torch.float64)
        t_next = torch.tensor(grid[1:] + [-1], dtype=torch.float64)
        t_mid = torch.tensor(fine[1::2], dtype=torch.float64)  # the 2N grid nests the N grid

        def loss(step: int, gen: torch.Generator, rows: Optional[int] = None):
            idx, t, a, s, x_t = self._noisy_batch(x_data, t_grid, gen, rows)
            with torch.no_grad():
                target = two_step_target(teacher, x_t, t, t_mid[idx], t_next[idx])
            return self._weighted(student.predict(x_t, t)[0], target, a, s), 2.0

        return loss

    def _fit_loss(self, student: Teacher, x_data):
        """The MLP imitates the teacher's x0 prediction on the grid the first round samples."""
        grid = torch.tensor(self.teacher.schedule.timesteps(self.config.start_steps), dtype=torch.float64)

        def loss(step: int, gen: torch.Generator, rows: Optional[int] = None):
            _, t, a, s, x_t = self._noisy_batch(x_data, grid, gen, rows)
            with torch.no_grad():
                target = self.teacher.x0(x_t, t)
            return self._weighted(student.predict(x_t, t)[0], target, a, s), 1.0

        return loss

    # -- stages ---------------------------------------------------------------------
    def _mlp_teacher(self) -> Teacher:
        """An untrained MLP predicting x0, in the analytic teacher's place."""
        dim = int(torch.tensor(self.teacher.sample_shape).prod())
        net = TimeMLP(dim, self.teacher.T, self.config.mlp_width).to(self.device)
        return self.teacher.replace(net=net.requires_grad_(False).eval(), prediction_type="sample")

    def _student_of(self, teacher: Teacher) -> Teacher:
        """A round's student: a trainable copy of its teacher, in the students' parameterisation,
        x0 unclipped (clipping would cut the gradient wherever the prediction leaves the data range)."""
        net = copy.deepcopy(teacher.net).requires_grad_(True).train()
        kind = self.config.parameterization
        if kind == "auto":
            kind = "x_and_epsilon" if self.teacher.prediction_type == "epsilon" else "teacher"
        if kind == "x_and_epsilon" and teacher.prediction_type != "x_and_epsilon":
            return teacher.replace(net=add_x_head(net), prediction_type="x_and_epsilon", clip_x0=False,
                                   autocast=True)
        return teacher.replace(net=net, clip_x0=False, autocast=True)

    def _stage(self, teacher: Teacher, student: Teacher, n: int, x_data) -> TrainStage:
        """Round n (the student takes n steps), or the MLP fit when n is start_steps."""
        fit = n == self.config.start_steps
        cfg = self.config
        if fit:
            cfg = dataclasses.replace(cfg, iterations=cfg.fit_iterations, lr=cfg.fit_lr)
        loss = self._fit_loss(student, x_data) if fit else self._round_loss(teacher, student, x_data, n)
        return TrainStage(student.net, loss, cfg, quick_sampler=lambda net: self._sampler(
            student.replace(net=net, clip_x0=self.teacher.clip_x0), n))

    def _frozen(self, student: Teacher, net) -> Teacher:
        """A finished student as a sampler and the next round's teacher: ``net`` (its EMA) frozen
        in eval mode (dropout off: targets must be deterministic), x0 clipped as the original
        teacher's, in the teacher's training precision."""
        return student.replace(net=net.requires_grad_(False).eval(), clip_x0=self.teacher.clip_x0,
                               autocast=self.teacher.autocast)

    def _step_counts(self) -> list[int]:
        """Every stage's student step count: start_steps (the MLP fit, analytic teachers only),
        then start_steps / 2, ..., end_steps."""
        n, out = self.config.start_steps, []
        if self.needs_fit:
            out.append(n)
        while n // 2 >= self.config.end_steps:
            n //= 2
            out.append(n)
        return out

    def training_stage(self) -> TrainStage:
        """The first round on placeholder data in the data range (the values of x do not change a
        step's cost); with an MLP teacher, an untrained one."""
        teacher = self._mlp_teacher() if self.needs_fit else self.teacher
        x = torch.rand((512,) + self.teacher.sample_shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
        return self._stage(teacher, self._student_of(teacher), self.config.start_steps // 2, x.to(self.device))

    def distill(self, ctx: DistillContext) -> dict[str, float]:
        x_data, data_cost = self._data(ctx)
        x_data = x_data.to(self.device)
        resume_round = _round_of(ctx.resume_from)
        teacher, totals = (self._mlp_teacher() if self.needs_fit else self.teacher), Totals()
        for n in self._step_counts():
            student = self._student_of(teacher)
            if resume_round is not None and n > resume_round:  # finished before the interruption
                teacher = self._frozen(student, _finished_round(student.net, n, ctx))
                self.rounds[n] = Round(n, teacher, None)
                continue
            round_ctx = dataclasses.replace(ctx, resume_from=ctx.resume_from if n == resume_round else None)
            trainer = Trainer(self._stage(teacher, student, n, x_data), round_ctx, start=totals)
            trainer.extra = {"round": n}
            trainer.fit()
            totals = trainer.total  # restored from the checkpoint where the round resumed
            teacher = self._frozen(student, trainer.ema)
            self.rounds[n] = Round(n, teacher, totals)
            save_weights(trainer.ema, Path(ctx.workdir) / _round_file(n))
            self.history += trainer.history
            ctx.log({"round/steps": float(n)}, totals.steps)
        cost = totals.as_cost()
        return with_data_cost(cost, data_cost)

    def _data(self, ctx: DistillContext) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        return training_data(self.teacher, cfg.data, cfg.synthetic_samples, cfg.synthetic_steps, ctx.seed, ctx.device)

    # -- samplers -------------------------------------------------------------------
    def max_nfe(self) -> int:
        return self.config.start_steps

    def variant(self) -> str:
        """Reports list the data-free run (synthetic) apart from the one trained on data (real)."""
        return self.config.data

    def default_nfe(self) -> tuple[int, ...]:
        out, n = [], self.config.start_steps
        while n >= self.config.end_steps:
            out.append(n)
            n //= 2
        return tuple(sorted(out))

    def check_nfe(self, nfe: int) -> None:
        if nfe not in self.default_nfe():
            raise BenchError(f"progressive distillation has samplers for NFE {self.default_nfe()}, not "
                             f"{nfe}; choose --nfe among them")

    @staticmethod
    def _sampler(model: Teacher, n: int) -> Sampler:
        steps = model.schedule.timesteps(n)
        return lambda noise, cond=None: ddim_sample(model, noise, steps, cond)

    def sampler(self, nfe: int) -> Sampler:
        """DDIM-nfe of the round that ends at nfe steps (the teacher itself at start_steps, unless
        an MLP was fitted in its place)."""
        self.check_nfe(nfe)
        found = self.rounds.get(nfe)
        return self._sampler(found.student if found else self.teacher, nfe)

    def distilled(self) -> dict[int, Distilled]:
        """Each finished round's student with DDIM over its own step count, as ``sampler``."""
        return {n: Distilled(r.student.net, ddim_rule(r.student, r.student.schedule.timesteps(n)))
                for n, r in sorted(self.rounds.items()) if n in self.default_nfe()}

    def save_artifacts(self, out_dir: Path) -> None:
        from bench.artifacts import plot_training

        for n, r in self.rounds.items():
            save_weights(r.student.net, out_dir / f"student_{n}step.safetensors")
        if self.history:
            plot_training(self.history, out_dir / "training_curve.png", "progressive distillation")


def _round_file(n: int) -> str:
    return f"round_{n:04d}step.safetensors"


def _finished_round(net, n: int, ctx: DistillContext):
    """A round finished before ``ctx.resume_from``, read beside that checkpoint (maybe another
    run's folder) and kept in this run's folder too, for this run's own resume."""
    beside = Path(ctx.resume_from).parent
    net = _load_round(net, beside / _round_file(n))
    if beside.resolve() != Path(ctx.workdir).resolve():
        save_weights(net, Path(ctx.workdir) / _round_file(n))
    return net


def _load_round(net, path: Path):
    """A copy of ``net`` with a finished round's weights (its EMA, saved when the round ended)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise BenchError(f"cannot resume progressive distillation: {path} (a finished round's student) "
                         f"is missing beside the checkpoint")
    net = copy.deepcopy(net)
    net.load_state_dict(load_file(str(path), device=str(next(net.parameters()).device)))
    return net


def _round_of(path) -> Optional[int]:
    """The round a progressive checkpoint was written in (None: a fresh start)."""
    if not path:
        return None
    from bench.checkpoints import read_checkpoint

    extra = read_checkpoint(Path(path)).get("extra", {})
    if "round" not in extra:
        raise BenchError(f"checkpoint {path} was not written by progressive distillation (no round)")
    return int(extra["round"])
