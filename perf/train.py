"""Training throughput, model-FLOP utilisation and MLflow logging overhead for ``bench perf``.

Training runs through the real loop (``Trainer.fit``, the code ``bench run`` uses) on the stage
a method reports as representative of its cost (``Method.training_stage``), in blocks of steps;
a block's wall time over its steps is one sample, and figures are medians over blocks. Step
FLOPs are counted once with ``torch.utils.flop_counter.FlopCounterMode`` on an eager step
(forward passes of student and teacher plus the backward; the optimiser's elementwise work is
not counted, as is usual for MFU). Logging overhead: blocks with the MLflow calls and blocks
without alternate in the same process; the time spent inside the calls over the logged blocks'
time is the overhead, and the A/B difference of the block times is reported beside it.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Optional

import torch

from bench import config as cfgs
from bench.errors import BenchError
from bench.method import DistillContext, TrainStage


def training_stage(method: str, teacher, device: torch.device, overrides: dict) -> TrainStage:
    """The registered method's representative training stage, with TrainConfig ``overrides``."""
    from bench.registry import METHODS

    cls = METHODS.get(method)
    stage = cls(teacher, cfgs.replace(cls.Config(), overrides, what=f"{method} config"), device).training_stage()
    if stage is None:
        raise BenchError(f"method {method!r} does not train; time its sampling with --sections sample")
    return stage


def step_flops(stage: TrainStage, device: torch.device, bf16: bool) -> float:
    """FLOPs of one eager training step (forward and backward), counted by FlopCounterMode: the
    model's update and each part's (a fake score's) updates, as the loop runs them."""
    from torch.utils.flop_counter import FlopCounterMode

    gen = torch.Generator().manual_seed(1)
    updates = [(p.model, p.loss, p.updates) for p in stage.parts] + [(stage.model, stage.loss, 1)]
    total = 0.0
    for model, loss_fn, n in updates:
        with FlopCounterMode(display=False) as counter:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                losses, _ = loss_fn(0, gen)
            losses.float().mean().backward()
        model.zero_grad(set_to_none=True)
        total += n * float(counter.get_total_flops())
    return total


class _SwitchLog:
    """ctx.log that calls MLflow only while ``on``, timing each call (the direct overhead)."""

    def __init__(self, log_fn: Optional[Callable]):
        self.log_fn, self.on, self.seconds, self.calls = log_fn, False, 0.0, 0

    def __call__(self, metrics: dict, step: int) -> None:
        if self.on and self.log_fn is not None:
            start = time.perf_counter()
            self.log_fn(metrics, step)
            self.seconds += time.perf_counter() - start
            self.calls += 1


def _block(trainer, steps: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` steps of the real loop."""
    trainer.cfg = dataclasses.replace(trainer.cfg, iterations=trainer.step + steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    trainer.fit()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def measure_training(method: str, teacher, device: torch.device, overrides: dict, steps: int,
                     warmup: int, blocks: int, log_fn: Optional[Callable] = None,
                     workdir: str = "checkpoints") -> dict[str, float]:
    """Images/s, FLOP/s, peak memory and (with ``log_fn``) logging overhead of ``method``.

    ``steps`` steps per block, ``blocks`` timed blocks per arm; with ``log_fn`` the arms
    (no logging, MLflow logging every ``log_every`` steps) alternate.
    """
    from bench.train import Trainer

    # no checkpoints or quick evaluations: they are not per-step cost
    stage = training_stage(method, teacher, device, {"checkpoint_every": 0, "eval_every": 0, **overrides})
    cfg = stage.config
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    flops = step_flops(stage, device, bf16)
    if log_fn is not None:  # whole logging periods per block, so a block logs as often as a run does
        steps, warmup = _round_up(steps, cfg.log_every), _round_up(max(warmup, 1), cfg.log_every)
    switch = _SwitchLog(log_fn)
    trainer = Trainer(stage, DistillContext(log=switch, device=device, seed=0, workdir=workdir, progress=False))
    start = time.perf_counter()
    _block(trainer, max(warmup, 1), device)  # compile, cuDNN autotuning, allocator
    warm_seconds = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    plain, logged = [], []
    for _ in range(blocks):
        switch.on = False
        plain.append(_block(trainer, steps, device))
        if log_fn is not None:
            switch.on = True
            logged.append(_block(trainer, steps, device))
    sec = statistics.median(plain)
    out = {"images_per_second": cfg.batch_size / sec, "step_seconds": sec, "step_flops": flops,
           "achieved_flops": flops / sec, "warmup_seconds": warm_seconds, "batch_size": cfg.batch_size}
    if device.type == "cuda":
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    if log_fn is not None:
        # direct: seconds inside the MLflow calls over the logged blocks' seconds. A/B: median
        # of adjacent (logged / plain) block pairs - 1, which cancels slow drift but not a shared
        # machine's +-10% block-to-block noise, so it only bounds the direct figure from above
        out["logging_overhead_fraction"] = switch.seconds / (sum(logged) * steps)
        out["logging_overhead_fraction_ab"] = statistics.median(b / a for a, b in zip(plain, logged)) - 1
        out["logging_call_seconds"] = switch.seconds / max(switch.calls, 1)
        out["log_every"] = cfg.log_every
    return out
