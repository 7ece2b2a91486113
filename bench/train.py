"""The shared training loop: every distillation method trains through ``Trainer.fit``.

A method supplies ``step_fn(it, gen) -> (per-sample losses, teacher forwards per sample)``
(the loop reduces the losses, cf. EDM's loss classes) and a way to turn the student into a
sampler for the periodic quick evaluation. The loop owns the optimiser, warm-up, gradient
clipping, bf16 autocast on CUDA, the EMA used for evaluation, checkpoints with RNG state,
progress and the ``train/*`` metrics.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from bench.config import option
from bench.errors import BenchError
from bench.method import DistillContext


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Fields every trained method shares (a method's config subclasses this)."""

    iterations: int = option(2000, "optimiser steps")
    batch_size: int = option(64, "samples per step (64 keeps a digits step ~0.16 s on 2 CPU cores)")
    lr: float = option(1e-4, "peak learning rate (1e-4: students start from the teacher's weights)")
    optimizer: str = option("adam", "adam or adamw")
    weight_decay: float = option(0.0, "decoupled weight decay (adamw)")
    warmup: int = option(50, "linear learning-rate warm-up steps (then constant)")
    grad_clip: float = option(1.0, "clip the gradient norm to this (0: off); loss weights such as "
                                   "BOOT's 1/(1-r)^2 make raw gradients spiky")
    ema_decay: float = option(0.999, "EMA of the student used for evaluation (0: off), with the "
                                     "usual warm-up min(decay, (1+step)/(10+step))")
    precision: str = option("auto", "auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16")
    log_every: int = option(10, "log train/* metrics every N steps")
    eval_every: int = option(0, "quick FID of the student every N steps (0: off)")
    eval_samples: int = option(256, "n of the quick evaluation (raised to the feature dimension if smaller)")
    checkpoint_every: int = option(0, "save a checkpoint every N steps (0: off)")
    resume_from: Optional[str] = option(None, "checkpoint file to resume from")

    def __post_init__(self):
        if self.iterations < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("iterations >= 0, batch_size >= 1 and lr > 0 are required")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be adam or adamw, got {self.optimizer!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError("ema_decay must be in [0, 1)")


StepFn = Callable[[int, torch.Generator], tuple[torch.Tensor, float]]


class Trainer:
    def __init__(self, model: nn.Module, cfg: TrainConfig, ctx: DistillContext):
        self.model, self.cfg, self.ctx = model, cfg, ctx
        self.ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema_decay > 0 else model
        params = [p for p in model.parameters() if p.requires_grad]
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.opt = opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda i: min(1.0, (i + 1) / max(1, cfg.warmup)))
        self.gen = torch.Generator().manual_seed(ctx.seed)
        self.step = 0
        self.teacher_nfe = 0.0  # cumulative teacher forward passes, counted per sample
        self.seconds = 0.0
        self.history: list[dict[str, float]] = []  # what was logged, for the training-curve plot
        device_type = ctx.device.type
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device_type == "cuda")
        self.autocast = lambda: torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16)
        if cfg.resume_from:
            self.load(Path(cfg.resume_from))

    # -- one step ------------------------------------------------------------------
    def _step(self, step_fn: StepFn) -> float:
        with self.autocast():
            losses, teacher_nfe = step_fn(self.step, self.gen)
        loss = losses.float().mean()
        if not torch.isfinite(loss):
            raise BenchError(f"training loss is {loss.item()} at step {self.step}; lower lr or raise grad_clip")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        if self.ema is not self.model:
            # warm-up as in common EMA practice: early averages must not be dominated by the init
            decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
            with torch.no_grad():
                for pe, p in zip(self.ema.parameters(), self.model.parameters()):
                    pe.lerp_(p, 1 - decay)
        self.teacher_nfe += teacher_nfe * len(losses)
        self.step += 1
        return loss.item()

    def fit(self, step_fn: StepFn, quick_sampler: Optional[Callable[[nn.Module], Callable]] = None) -> dict:
        """Train to ``cfg.iterations``; returns the cost (seconds, teacher forward passes)."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        bar = tqdm(total=cfg.iterations, initial=self.step, disable=not self.ctx.progress,
                   unit="it", desc="distilling")
        while self.step < cfg.iterations:
            start = time.perf_counter()
            loss = self._step(step_fn)
            if self.ctx.device.type == "cuda":
                torch.cuda.synchronize(self.ctx.device)
            elapsed = time.perf_counter() - start
            self.seconds += elapsed
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            if self.step % cfg.log_every == 0 or self.step == cfg.iterations:
                self._log({"train/loss": loss, "train/seconds": self.seconds,
                           "train/teacher_nfe": self.teacher_nfe,
                           "train/images_per_second": cfg.batch_size / max(elapsed, 1e-9)})
            if quick_sampler and cfg.eval_every and self.step % cfg.eval_every == 0 and self.ctx.quick_eval:
                fid = self.ctx.quick_eval(quick_sampler(self.ema), cfg.eval_samples)
                self._log({"train/fid": fid})
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save(self.ctx.workdir / f"checkpoint_{self.step:07d}.pt")
        bar.close()
        return {"train_seconds": self.seconds, "teacher_nfe": self.teacher_nfe,
                "train_iterations": float(self.step)}

    def _log(self, metrics: dict[str, float]) -> None:
        self.ctx.log(metrics, self.step)
        self.history.append({"step": float(self.step), "train/seconds": self.seconds, **metrics})

    # -- checkpoints -----------------------------------------------------------------
    def save(self, path: Path) -> Path:
        """Student, EMA, optimiser, step, cost counters and RNG states in one file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                 "step": self.step, "teacher_nfe": self.teacher_nfe, "seconds": self.seconds,
                 "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state()}
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)  # atomic: an interrupted save never leaves a truncated checkpoint
        return path

    def load(self, path: Path) -> None:
        if not path.is_file():
            raise BenchError(f"checkpoint {path} does not exist; check resume_from")
        state = torch.load(path, map_location=self.ctx.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.step, self.teacher_nfe, self.seconds = state["step"], state["teacher_nfe"], state["seconds"]
        self.gen.set_state(state["gen"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
