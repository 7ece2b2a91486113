"""Progressive distillation (Salimans & Ho 2022): halve the number of DDIM steps per round.

The student starts as the teacher. In a round with N student steps on the trailing grid,
for x_t = alpha_t x + sigma_t eps two teacher DDIM steps t -> t' -> t'' (on the 2N grid) give
x_{t''}, and the student's x0-target is (Salimans & Ho, Algorithm 2)
    x~ = (x_{t''} - (sigma_{t''} / sigma_t) x_t) / (alpha_{t''} - (sigma_{t''} / sigma_t) alpha_t),
so one student DDIM step from t lands exactly on x_{t''}. The loss is max(SNR_t, 1) ||x^ - x~||^2
(truncated SNR weighting). After the round the student becomes the teacher.
It needs x: ``data=real`` uses the teacher's registered data set; ``data=synthetic`` samples
the teacher once with K DDIM steps, caches the samples and counts their cost in the run.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.config import option
from bench.errors import BenchError
from bench.method import DistillContext, Method
from bench.registry import METHODS
from bench.sampling import Sampler, ddim_sample, ddim_step
from bench.teachers.base import Teacher
from bench.train import TrainConfig, Trainer


@dataclasses.dataclass(frozen=True)
class ProgressiveConfig(TrainConfig):
    iterations: int = option(400, "optimiser steps per round")
    start_steps: int = option(64, "the teacher's step count the first round halves (power of 2 times end)")
    end_steps: int = option(1, "the last round's student step count")
    data: str = option("real", "real (the teacher's registered data set) or synthetic (teacher samples)")
    synthetic_samples: int = option(2000, "synthetic data: number of teacher samples")
    synthetic_steps: int = option(64, "synthetic data: DDIM steps the teacher takes per sample")
    lr: float = option(1e-4, "learning rate (students start from the previous round's weights)")

    def __post_init__(self):
        super().__post_init__()
        ratio = self.start_steps // max(self.end_steps, 1)
        if self.end_steps < 1 or ratio < 2 or ratio & (ratio - 1) or ratio * self.end_steps != self.start_steps:
            raise ValueError("start_steps must be end_steps times a power of two (>= 2)")
        if self.data not in ("real", "synthetic"):
            raise ValueError(f"data must be real or synthetic, got {self.data!r}")


def two_step_target(teacher: Teacher, x_t, t: int, t_mid: int, t_next: int) -> torch.Tensor:
    """x~ for one student step t -> t_next from two teacher DDIM steps t -> t_mid -> t_next."""
    x_next = ddim_step(teacher, ddim_step(teacher, x_t, t, t_mid), t_mid, t_next)
    a_t, s_t = teacher.coefficients(t, x_t)
    a_n, s_n = teacher.coefficients(t_next, x_t)
    ratio = s_n / s_t
    return (x_next - ratio * x_t) / (a_n - ratio * a_t)


@METHODS.register("progressive", "progressive distillation (Salimans & Ho 2022): halve DDIM steps per round")
class Progressive(Method):
    Config = ProgressiveConfig

    def __init__(self, teacher, config: ProgressiveConfig, device):
        super().__init__(teacher, config, device)
        if config.start_steps > teacher.T:
            raise ValueError(f"start_steps {config.start_steps} exceeds the teacher's {teacher.T} steps")
        if not any(True for _ in teacher.net.parameters()):
            raise BenchError("progressive distillation trains a copy of the teacher's network, and this "
                             "teacher has none (analytic); use a network teacher such as digits")
        self.students: dict[int, Teacher] = {}  # step count -> distilled student
        self.history: list[dict] = []

    def _data(self, ctx: DistillContext) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        if cfg.data == "real":
            if self.teacher.reference is None:
                raise BenchError("this teacher has no registered data set; use --set data=synthetic")
            return self.teacher.reference(), {}
        return synthetic_data(self.teacher, cfg.synthetic_samples, cfg.synthetic_steps, ctx)

    def distill(self, ctx: DistillContext) -> dict[str, float]:
        cfg = self.config
        x_data, cost = self._data(ctx)
        x_data = x_data.to(self.device)
        teacher, n, step0, seconds, teacher_nfe = self.teacher, cfg.start_steps // 2, 0, 0.0, 0.0
        resume = _resume_point(cfg.resume_from)
        clip = self.teacher.clip_x0
        while n >= cfg.end_steps:
            if resume and n > resume["round"]:  # finished before the interruption: reload its student
                teacher = _load_round(teacher, Path(cfg.resume_from).parent / _round_file(n), clip)
                self.students[n], n = teacher, n // 2
                continue
            if resume:  # the interrupted round: its checkpoint carries the cost so far
                step0, seconds, teacher_nfe = resume["step0"], resume["seconds"], resume["teacher_nfe"]
            student = _trainable_copy(teacher)  # this round's student starts as its teacher
            grid, fine = teacher.schedule.timesteps(n), teacher.schedule.timesteps(2 * n)
            loss = self._loss_fn(teacher, student, x_data, grid, fine)
            round_ctx = _offset_ctx(ctx, step0, seconds, teacher_nfe)
            trainer = Trainer(student.net, dataclasses.replace(cfg, resume_from=cfg.resume_from if resume
                                                               else None), round_ctx)
            resume = None
            trainer.extra = {"round": n, "step0": step0, "seconds": seconds, "teacher_nfe": teacher_nfe}
            out = trainer.fit(loss, quick_sampler=lambda net, n=n: self._sampler(_frozen(student, net, clip), n))
            teacher = _frozen(student, trainer.ema, clip)
            self.students[n] = teacher
            _save_round(trainer.ema, Path(ctx.workdir) / _round_file(n))
            self.history += [{**h, "train/seconds": h["train/seconds"] + seconds} for h in trainer.history]
            step0, seconds, teacher_nfe = step0 + out["train_iterations"], seconds + out["train_seconds"], \
                teacher_nfe + out["teacher_nfe"]
            ctx.log({"round/steps": float(n)}, int(step0))
            n //= 2
        return {"train_seconds": seconds, "teacher_nfe": teacher_nfe + cost.get("data_teacher_nfe", 0.0),
                "train_iterations": float(step0), **cost}

    def _loss_fn(self, teacher, student, x_data, grid, fine):
        B = self.config.batch_size
        t_grid = torch.tensor(grid, dtype=torch.float64)
        t_next = torch.tensor(grid[1:] + [-1], dtype=torch.float64)
        t_mid = torch.tensor(fine[1::2], dtype=torch.float64)  # the 2N grid nests the N grid

        def step(it: int, gen: torch.Generator):
            x = x_data[torch.randint(0, len(x_data), (B,), generator=gen).to(x_data.device)]
            idx = torch.randint(0, len(grid), (B,), generator=gen)
            eps = torch.randn(x.shape, generator=gen).to(x.device)
            t = t_grid[idx]
            a, s = teacher.coefficients(t, x)
            x_t = a * x + s * eps
            with torch.no_grad():
                target = two_step_target(teacher, x_t, t, t_mid[idx], t_next[idx])
            x0 = student.predict(x_t, t)[0]
            snr = (a ** 2 / s ** 2).flatten().float()
            return snr.clamp(min=1.0) * (x0 - target).pow(2).flatten(1).mean(1), 2.0

        return step

    def max_nfe(self) -> int:
        return self.config.start_steps

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
        self.check_nfe(nfe)
        return self._sampler(self.students.get(nfe, self.teacher), nfe)

    def save_artifacts(self, out_dir: Path) -> None:
        from bench.artifacts import plot_training, save_weights

        for n, model in self.students.items():
            save_weights(model.net, out_dir / f"student_{n}step.safetensors")
        if self.history:
            plot_training(self.history, out_dir / "training_curve.png", "progressive distillation")


def _trainable_copy(teacher: Teacher) -> Teacher:
    """The student: the teacher's network, copied and trainable, with x0 left unclipped
    (clipping would cut the gradient wherever the prediction leaves the data range)."""
    return teacher.replace(net=copy.deepcopy(teacher.net).requires_grad_(True).train(), clip_x0=False)


def _frozen(student: Teacher, net, clip_x0: bool) -> Teacher:
    """The student as a sampler/teacher: ``net`` (e.g. its EMA), x0 clipped as the teacher's."""
    return student.replace(net=net, clip_x0=clip_x0)


def _round_file(n: int) -> str:
    return f"round_{n:04d}step.safetensors"


def _save_round(net, path: Path) -> None:
    """A finished round's student (EMA), atomically: a resumed run rebuilds earlier rounds from these."""
    from bench.artifacts import save_weights

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_weights(net, tmp)
    tmp.replace(path)


def _load_round(teacher: Teacher, path: Path, clip_x0: bool) -> Teacher:
    from safetensors.torch import load_file

    if not path.is_file():
        raise BenchError(f"cannot resume progressive distillation: {path} (a finished round's student) "
                         f"is missing beside the checkpoint")
    net = copy.deepcopy(teacher.net).requires_grad_(False).train()  # as the Trainer's EMA copy
    net.load_state_dict(load_file(str(path), device=str(next(net.parameters()).device)))
    return teacher.replace(net=net, clip_x0=clip_x0)


def _resume_point(path) -> dict | None:
    """The round and the cost so far stored in a progressive checkpoint (None: a fresh start)."""
    if not path:
        return None
    from bench.train import read_checkpoint

    extra = read_checkpoint(Path(path)).get("extra", {})
    if "round" not in extra:
        raise BenchError(f"checkpoint {path} was not written by progressive distillation (no round)")
    return extra


def _offset_ctx(ctx: DistillContext, step0: float, seconds: float, nfe: float) -> DistillContext:
    """Rounds log on one axis: steps, seconds and teacher passes continue across rounds."""
    def log(metrics: dict[str, float], step: int) -> None:
        m = dict(metrics)
        if "train/seconds" in m:
            m["train/seconds"] += seconds
        if "train/teacher_nfe" in m:
            m["train/teacher_nfe"] += nfe
        ctx.log(m, int(step0) + step)

    return dataclasses.replace(ctx, log=log, step_offset=ctx.step_offset + int(step0))


def synthetic_data(teacher: Teacher, n: int, steps: int, ctx: DistillContext) -> tuple[torch.Tensor, dict]:
    """n teacher DDIM-``steps`` samples, generated once and cached with what they cost."""
    from bench.artifacts import save_npz_atomic
    from bench.evaluator import generate
    from bench.reference import cache_root
    from bench.sampling import teacher_sampler

    key = hashlib.sha256(json.dumps({"teacher": teacher.provenance.as_params(), "n": n, "steps": steps,
                                     "seed": ctx.seed}, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_root() / "synthetic" / f"{key}.npz"
    if path.is_file():
        with np.load(path) as d:
            x, seconds = torch.from_numpy(d["x"]), float(d["seconds"])
    else:
        start = time.perf_counter()
        with torch.no_grad():
            x = generate(teacher_sampler(teacher, steps), teacher.sample_shape, n,
                         ctx.seed + 0xDA7A, 250, ctx.device).samples
        seconds = time.perf_counter() - start
        save_npz_atomic(path, x=x.numpy(), seconds=seconds)
    return x, {"data_seconds": seconds, "data_teacher_nfe": float(n * steps)}
