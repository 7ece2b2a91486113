"""The training loop every trained method shares (EMA, clipping, bf16, checkpoints, metrics).

A method hands the loop a :class:`bench.method.TrainStage`: the model to train, a loss that
draws one batch and returns per-sample losses with the teacher forward passes they cost, the
frozen networks and a way to turn the model into a sampler for the periodic quick evaluation.
The loop owns the optimiser, warm-up, gradient clipping, bf16 autocast on CUDA, the EMA used
for evaluation, checkpoints with RNG state, progress and the ``train/*`` metrics. A method
with several stages (progressive distillation's rounds) passes each stage the totals of the
stages before it, so steps, seconds and teacher passes continue on one axis.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path

import torch
from torch import nn

from bench import accel
from bench import checkpoints as ckpt
from bench.errors import BenchError, first_line
from bench.method import DistillContext, TrainStage
from bench.streams import Streams
from bench.train_config import TrainConfig  # noqa: F401 (methods import it from here)


@dataclasses.dataclass(frozen=True)
class Totals:
    """What training has cost: optimiser steps, seconds, teacher forward passes (counted per sample)."""

    steps: int = 0
    seconds: float = 0.0
    teacher_forwards: float = 0.0

    def __add__(self, other: "Totals") -> "Totals":
        return Totals(self.steps + other.steps, self.seconds + other.seconds,
                      self.teacher_forwards + other.teacher_forwards)

    def as_cost(self) -> dict[str, float]:
        """The run-level metrics of a distillation's cost."""
        return {"train_seconds": self.seconds, "teacher_forwards": self.teacher_forwards,
                "train_iterations": float(self.steps)}


def frozen_teacher(teacher, cfg: TrainConfig):
    """The teacher as training steps call it: in float32 unless ``teacher_precision`` is autocast."""
    return teacher.replace(autocast=cfg.teacher_precision == "autocast")


class Diverged(BenchError):
    """A non-finite loss or gradient: training cannot go on from here."""


class Trainer:
    def __init__(self, stage: TrainStage, ctx: DistillContext, start: Totals = Totals()):
        """``start``: what earlier stages of the same distillation cost (logged on one axis)."""
        self.stage, self.cfg, self.ctx, self.start = stage, stage.config, ctx, start
        self.model = stage.model
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if self.cfg.ema_decay > 0 else self.model
        names = [p.name for p in stage.parts]
        if len(set(names)) != len(names) or "" in names:
            raise ValueError(f"the parts of a training stage need distinct non-empty names, got {names}")
        self._accelerate(stage.frozen)  # after the EMA copy: a copy of a compiled module shares its call
        self.opt, self.sched = self._optimiser(self.model, self.cfg.lr)
        # name -> (part, its optimiser, its schedule); updated before the model in every step
        self.parts = {p.name: (p, *self._optimiser(p.model, p.lr)) for p in stage.parts}
        self.part_loss: dict[str, float] = {}
        # the batch's random streams (micro-batches, workers); one stream is the seed's generator
        self.streams = Streams(ctx.seed, self.cfg.batch_size, self.cfg.micro_batches, ctx.rank, ctx.world)
        self.lead = ctx.rank == 0  # logs, evaluates and writes checkpoints
        self.done = Totals()  # this stage's own cost
        self.history: list[dict[str, float]] = []  # what was logged, for the training-curve plot
        self.extra: dict = {}  # a method's own resume state (e.g. the progressive round), saved as is
        self._saved_step = -1
        self._rng_before = None
        self._updated = 0
        device_type = ctx.device.type
        self.bf16 = self.cfg.precision == "bf16" or (self.cfg.precision == "auto" and device_type == "cuda")
        self.autocast = lambda: torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16)
        if ctx.resume_from:
            self.load(ctx.resume_from)

    @property
    def step(self) -> int:
        return self.done.steps

    @property
    def total(self) -> Totals:
        """The distillation's cost so far: earlier stages and this one."""
        return self.start + self.done

    def _optimiser(self, model: nn.Module, lr: float):
        """The stage's optimiser over ``model``'s trainable weights, with the linear warm-up."""
        params = [p for p in model.parameters() if p.requires_grad]
        opt = accel.make_optimizer(self.cfg.optimizer, params, lr, self.cfg.weight_decay, self.cfg.adam_beta1,
                                   accel.use_fused(self.cfg.fused_optimizer, self.ctx.device))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / max(1, self.cfg.warmup)))
        return opt, sched

    def _accelerate(self, frozen) -> None:
        """Apply the GPU-path options (bench/accel.py); each is a no-op or CPU-safe."""
        cfg, device = self.cfg, self.ctx.device
        trained = [self.model, *(p.model for p in self.stage.parts)]
        accel.enable_tf32(device, cfg.tf32)
        if cfg.grad_checkpointing:
            for model in trained:
                accel.enable_grad_checkpointing(model)
        if cfg.channels_last:
            accel.to_channels_last([*trained, self.ema, *frozen])
        if cfg.compile:
            accel.compile_in_place([*trained, *frozen], device)

    # -- one step ------------------------------------------------------------------
    def _step(self) -> float:
        """One step of the stage: each part's updates, then the model's; returns the model's loss."""
        # the RNG before the step: a last-good checkpoint written after a failed step must
        # resume exactly as if the step had not started
        self._rng_before = ({k: g.get_state() for k, g in self.streams.items()}, torch.get_rng_state())
        self._updated = 0  # optimiser steps taken in this step (a failure after one: no last-good save)
        rows = 0.0
        for name, (part, opt, sched) in self.parts.items():
            for _ in range(part.updates):
                self.part_loss[name], forwards = self._update(part.model, part.loss, opt, sched, f"{name} ")
                rows += forwards
        loss, forwards = self._update(self.model, self.stage.loss, self.opt, self.sched, "")
        self._update_ema()
        self.done += Totals(1, 0.0, rows + forwards)
        return loss

    def _update(self, model: nn.Module, loss_fn, opt, sched, what: str) -> tuple[float, float]:
        """One optimiser step of ``model`` on one batch of ``loss_fn``, drawn as this process's
        streams (bench/streams.py): (the batch's mean loss, the teacher forward rows it cost).
        Gradients a loss leaves in another network's weights are harmless: every optimiser
        clears its own before its backward pass."""
        opt.zero_grad(set_to_none=True)
        share, forwards = 0.0, 0.0
        for _, gen in self.streams.items():
            with self.autocast():
                losses, teacher_forwards = loss_fn(self.step, gen, self.streams.rows)
            loss = losses.float().mean() / self.streams.count  # this stream's share of the batch mean
            if torch.isfinite(loss):  # a non-finite one is raised below, on every worker alike
                loss.backward()
            share, forwards = share + loss.item(), forwards + teacher_forwards * len(losses)
        mean, forwards = self.streams.sum([share, forwards], self.ctx.device)
        if not math.isfinite(mean):
            raise Diverged(f"{what}loss is {mean} at step {self.total.steps}")
        params = [p for p in model.parameters() if p.requires_grad]
        self.streams.sum_gradients(params)
        if self.cfg.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
            if not torch.isfinite(norm):  # clipping by a non-finite norm would write NaN into every weight
                raise Diverged(f"{what}gradient norm is {norm.item()} at step {self.total.steps}")
        opt.step()
        sched.step()
        self._updated += 1
        return mean, forwards

    def _update_ema(self) -> None:
        if self.ema is self.model:
            return
        # warm-up as in common EMA practice: early averages must not be dominated by the init
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.model.parameters()):
                pe.lerp_(p, 1 - decay)

    def fit(self) -> Totals:
        """Train to ``cfg.iterations`` steps of this stage; returns this stage's cost."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        bar = tqdm(total=cfg.iterations, initial=self.step, disable=not (self.ctx.progress and self.lead),
                   unit="it", desc="distilling")
        while self.step < cfg.iterations:
            start = time.perf_counter()
            try:
                loss = self._step()
            except Diverged as exc:
                bar.close()
                fault = self.ctx.teacher_fault() if self.ctx.teacher_fault else ""
                if fault:
                    raise BenchError(f"training stopped at step {self.total.steps}: {exc}, because the "
                                     f"teacher's own output is not finite ({fault}); this is no divergence "
                                     f"(a lower lr will not help): check the teacher's weights") from None
                raise Diverged(f"training diverged: {exc}; {self._save_last_good()}; lower lr "
                               f"(or set grad_clip) and continue with --resume-from CHECKPOINT") from None
            if self.ctx.device.type == "cuda":
                torch.cuda.synchronize(self.ctx.device)
            elapsed = time.perf_counter() - start
            self.done += Totals(0, elapsed, 0.0)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            self._after_step(loss, elapsed)
        if cfg.checkpoint_every and self._saved_step != self.step:
            self.checkpoint()  # the trained state: a run killed during evaluation skips training
        bar.close()
        return self.done

    def _after_step(self, loss: float, elapsed: float) -> None:
        cfg = self.cfg
        if self.lead:
            self._report(loss, elapsed)
        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
            self.checkpoint()  # on every worker: the streams' states are gathered

    def _report(self, loss: float, elapsed: float) -> None:
        """The train/* metrics and the quick FID (rank 0)."""
        cfg, total = self.cfg, self.total
        if self.step % cfg.log_every == 0 or self.step == cfg.iterations:
            self._log({"train/loss": loss, **{f"train/loss_{k}": v for k, v in self.part_loss.items()},
                       "train/seconds": total.seconds,
                       "train/teacher_forwards": total.teacher_forwards,
                       "train/images_per_second": cfg.batch_size / max(elapsed, 1e-9)})
        if self.stage.quick_sampler and cfg.eval_every and self.step % cfg.eval_every == 0 \
                and self.ctx.quick_eval:
            self._log({"train/fid": self.ctx.quick_eval(self.stage.quick_sampler(self.ema), cfg.eval_samples)})

    def _log(self, metrics: dict[str, float]) -> None:
        self.ctx.log(metrics, self.total.steps)
        self.history.append({"step": float(self.total.steps), "train/seconds": self.total.seconds, **metrics})

    # -- checkpoints -----------------------------------------------------------------
    def checkpoint(self):
        """Save ``checkpoint_<global step>.pt`` in the work folder; keep the newest few.

        Weights that already went non-finite (possible without gradient clipping) are never
        saved, so the newest checkpoint on disk is always a good one to resume from."""
        if not self._finite():
            raise Diverged(f"training diverged: the weights are not finite at step {self.total.steps}; "
                           f"{self._newest_good()}")
        path = self.save(ckpt.checkpoint_path(self.ctx.workdir, self.total.steps))
        if self.lead:
            ckpt.prune(self.ctx.workdir, self.cfg.keep_checkpoints)
        return path

    def _finite(self) -> bool:
        models = [self.model, *(part.model for part, _, _ in self.parts.values())]
        return all(bool(torch.isfinite(p).all()) for m in models for p in m.parameters())

    def _newest_good(self) -> str:
        found = ckpt.newest_checkpoint(self.ctx.workdir)
        return f"the last good checkpoint is {found}" if found else "no good checkpoint was saved"

    def _save_last_good(self) -> str:
        """After a failed step: the weights are those of the previous step unless they were
        already non-finite, in which case the newest checkpoint is the last good state."""
        if not self._finite() or self._updated:  # a part already stepped: the step is half done
            return self._newest_good()
        if self._rng_before is not None:
            for k, g in self.streams.items():
                g.set_state(self._rng_before[0][k])
            torch.set_rng_state(self._rng_before[1])
        return f"the last good state (step {self.total.steps}) is saved in {self.checkpoint()}"

    def save(self, path):
        """Student, EMA, optimiser, cost so far (this stage and before), RNG states (every
        stream's, gathered from the workers: all take part, rank 0 writes) and ``extra``."""
        streams = self.streams.state()
        self._saved_step = self.step
        if not self.lead:
            return path
        state = {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                 "step": self.step, "done": dataclasses.asdict(self.done),
                 "start": dataclasses.asdict(self.start), "streams": streams,
                 "torch_rng": torch.get_rng_state(), "extra": self.extra,
                 "parts": {name: {"model": part.model.state_dict(), "opt": opt.state_dict(),
                                  "sched": sched.state_dict()} for name, (part, opt, sched) in self.parts.items()}}
        ckpt.write_checkpoint(state, path)
        return path

    def load(self, path) -> None:
        state = ckpt.read_checkpoint(path, self.ctx.device)
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.opt.load_state_dict(state["opt"])
            for name, (part, opt, sched) in self.parts.items():
                part.model.load_state_dict(state["parts"][name]["model"])
                opt.load_state_dict(state["parts"][name]["opt"])
                sched.load_state_dict(state["parts"][name]["sched"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise BenchError(f"checkpoint {path} does not fit this model and config "
                             f"({first_line(exc, 200)})") from None
        self.sched.load_state_dict(state["sched"])
        self.done, self.start = Totals(**state["done"]), Totals(**state["start"])
        self.streams.load(Streams.saved(state), f"checkpoint {path}")
        torch.set_rng_state(state["torch_rng"].cpu())
        self.extra = dict(state.get("extra", {}))
        # a checkpoint from another folder (--resume-from, a re-evaluation) is copied into this
        # run's own at the end of training, so that this run can be resumed on its own
        here = Path(path).resolve().parent == Path(self.ctx.workdir).resolve()
        self._saved_step = self.step if here else -1


def train(stage: TrainStage, ctx: DistillContext) -> tuple[nn.Module, list[dict[str, float]], dict[str, float]]:
    """Run one stage to its end (continuing from ``ctx.resume_from``): (the model's EMA in eval
    mode, what was logged, the cost metrics)."""
    trainer = Trainer(stage, ctx)
    cost = trainer.fit()
    return trainer.ema.eval(), trainer.history, cost.as_cost()
