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
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from bench import accel
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
    checkpoint_every: int = option(250, "save a checkpoint every N steps and at the end (0: off); "
                                         "a killed run resumes from the newest (bench run --resume)")
    keep_checkpoints: int = option(2, "newest checkpoints kept per run (older ones are deleted)")
    resume_from: Optional[str] = option(None, "checkpoint file to resume from")
    compile: bool = option(False, "torch.compile the student (and a frozen teacher) for training and "
                                  "one-step sampling; the first steps pay the compile time")
    channels_last: bool = option(False, "NHWC convolution weights (faster on some GPUs, slower on others: "
                                        "measure with bench perf --channels-last both)")
    grad_checkpointing: bool = option(False, "recompute activations in the backward pass (diffusers UNet "
                                             "students): less memory for large teachers, ~15-25% slower")
    fused_optimizer: str = option("auto", "fused Adam kernel: auto (on CUDA), on or off")
    tf32: bool = option(True, "TF32 matmuls/convolutions on CUDA for what autocast leaves in fp32")

    def __post_init__(self):
        if self.iterations < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("iterations >= 0, batch_size >= 1 and lr > 0 are required")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be adam or adamw, got {self.optimizer!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError("ema_decay must be in [0, 1)")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 1:
            raise ValueError("checkpoint_every must be >= 0 and keep_checkpoints >= 1")
        if self.fused_optimizer not in ("auto", "on", "off"):
            raise ValueError(f"fused_optimizer must be auto, on or off, got {self.fused_optimizer!r}")


StepFn = Callable[[int, torch.Generator], tuple[torch.Tensor, float]]
CHECKPOINT_GLOB = "checkpoint_*.pt"


class Diverged(BenchError):
    """A non-finite loss or gradient: training cannot go on from here."""


def checkpoint_step(path: Path) -> int:
    """The global step in a checkpoint's name (``checkpoint_0000250.pt`` -> 250)."""
    return int(path.stem.rsplit("_", 1)[1])


def list_checkpoints(workdir: Path) -> list[Path]:
    """Checkpoints in ``workdir``, oldest first by step (names sort wrongly past 9,999,999)."""
    found = [p for p in Path(workdir).glob(CHECKPOINT_GLOB) if p.stem.rsplit("_", 1)[1].isdigit()]
    return sorted(found, key=checkpoint_step)


def read_checkpoint(path: Path, device="cpu") -> dict:
    """A checkpoint's state, loaded as weights only; unreadable files are one-line BenchErrors."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"checkpoint {path} does not exist; check resume_from")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated, corrupt or pickled files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BenchError(f"checkpoint {path} cannot be loaded as weights ({first[:200]}); "
                         f"delete it to resume from an older one") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise BenchError(f"checkpoint {path} is not a distill-bench training checkpoint")
    return state


class Trainer:
    def __init__(self, model: nn.Module, cfg: TrainConfig, ctx: DistillContext,
                 frozen: Sequence[nn.Module] = ()):
        """``frozen``: networks the step runs without training them (the teacher); they get
        the same channels_last / compile treatment as the student."""
        self.model, self.cfg, self.ctx = model, cfg, ctx
        self.ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema_decay > 0 else model
        self._accelerate(frozen)  # after the EMA copy: a copy of a compiled module shares its call
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = accel.make_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay,
                                        accel.use_fused(cfg.fused_optimizer, ctx.device))
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda i: min(1.0, (i + 1) / max(1, cfg.warmup)))
        self.gen = torch.Generator().manual_seed(ctx.seed)
        self.step = 0
        self.teacher_nfe = 0.0  # cumulative teacher forward passes, counted per sample
        self.seconds = 0.0
        self.history: list[dict[str, float]] = []  # what was logged, for the training-curve plot
        self.extra: dict = {}  # a method's own resume state (e.g. the progressive round), saved as is
        self._saved_step = -1
        self._rng_before = None
        device_type = ctx.device.type
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device_type == "cuda")
        self.autocast = lambda: torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16)
        if cfg.resume_from:
            self.load(Path(cfg.resume_from))

    def _accelerate(self, frozen: Sequence[nn.Module]) -> None:
        """Apply the GPU-path options (bench/accel.py); each is a no-op or CPU-safe."""
        cfg, device = self.cfg, self.ctx.device
        accel.enable_tf32(device, cfg.tf32)
        if cfg.grad_checkpointing:
            accel.enable_grad_checkpointing(self.model)
        if cfg.channels_last:
            accel.to_channels_last([self.model, self.ema, *frozen])
        if cfg.compile:
            accel.compile_in_place([self.model, *frozen], device)

    # -- one step ------------------------------------------------------------------
    def _step(self, step_fn: StepFn) -> float:
        # the RNG before the step: a last-good checkpoint written after a failed step must
        # resume exactly as if the step had not started
        self._rng_before = (self.gen.get_state(), torch.get_rng_state())
        with self.autocast():
            losses, teacher_nfe = step_fn(self.step, self.gen)
        loss = losses.float().mean()
        if not torch.isfinite(loss):
            raise Diverged(f"loss is {loss.item()} at step {self.step}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            if not torch.isfinite(norm):  # clipping by a non-finite norm would write NaN into every weight
                raise Diverged(f"gradient norm is {norm.item()} at step {self.step}")
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
            try:
                loss = self._step(step_fn)
            except Diverged as exc:
                bar.close()
                raise Diverged(f"training diverged: {exc}; {self._save_last_good()}; lower lr "
                               f"(or set grad_clip) and pass --set resume_from=CHECKPOINT") from None
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
                self.checkpoint()
        if cfg.checkpoint_every and self._saved_step != self.step:
            self.checkpoint()  # the trained state: a run killed during evaluation skips training
        bar.close()
        return {"train_seconds": self.seconds, "teacher_nfe": self.teacher_nfe,
                "train_iterations": float(self.step)}

    def _log(self, metrics: dict[str, float]) -> None:
        self.ctx.log(metrics, self.step)
        self.history.append({"step": float(self.step), "train/seconds": self.seconds, **metrics})

    # -- checkpoints -----------------------------------------------------------------
    def checkpoint(self) -> Path:
        """Save ``checkpoint_<global step>.pt`` in the work folder; keep the newest few.

        Weights that already went non-finite (possible without gradient clipping) are never
        saved, so the newest checkpoint on disk is always a good one to resume from."""
        if not self._finite():
            raise Diverged(f"training diverged: the weights are not finite at step {self.step}; "
                           f"{self._newest_good()}")
        workdir = Path(self.ctx.workdir)
        path = self.save(workdir / f"checkpoint_{self.ctx.step_offset + self.step:07d}.pt")
        for old in list_checkpoints(workdir)[:-self.cfg.keep_checkpoints]:
            old.unlink(missing_ok=True)
        return path

    def _finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    def _newest_good(self) -> str:
        found = list_checkpoints(Path(self.ctx.workdir))
        return f"the last good checkpoint is {found[-1]}" if found else "no good checkpoint was saved"

    def _save_last_good(self) -> str:
        """After a failed step: the weights are those of the previous step unless they were
        already non-finite, in which case the newest checkpoint is the last good state."""
        if not self._finite():
            return self._newest_good()
        if self._rng_before is not None:
            self.gen.set_state(self._rng_before[0])
            torch.set_rng_state(self._rng_before[1])
        return f"the last good state (step {self.ctx.step_offset + self.step}) is saved in {self.checkpoint()}"

    def save(self, path: Path) -> Path:
        """Student, EMA, optimiser, step, cost counters, RNG states and ``extra`` in one file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                 "step": self.step, "teacher_nfe": self.teacher_nfe, "seconds": self.seconds,
                 "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(), "extra": self.extra}
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)  # atomic: an interrupted save never leaves a truncated checkpoint
        self._saved_step = self.step
        return path

    def load(self, path: Path) -> None:
        state = read_checkpoint(path, self.ctx.device)
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.opt.load_state_dict(state["opt"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0][:200]
            raise BenchError(f"checkpoint {path} does not fit this model and config ({first})") from None
        self.sched.load_state_dict(state["sched"])
        self.step, self.teacher_nfe, self.seconds = state["step"], state["teacher_nfe"], state["seconds"]
        self.gen.set_state(state["gen"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        self.extra, self._saved_step = dict(state.get("extra", {})), self.step
