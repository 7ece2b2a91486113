"""Training throughput, model-FLOP utilisation and MLflow logging overhead for ``bench perf``.

Training runs through the real loop (``Trainer.fit``, the code ``bench run`` uses) in blocks of
steps; a block's wall time over its steps is one sample, and figures are medians over blocks.
Step FLOPs are counted once with ``torch.utils.flop_counter.FlopCounterMode`` on an eager step
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
from torch import nn

from bench import config as cfgs
from bench.method import DistillContext


@dataclasses.dataclass
class TrainHandle:
    """What one training stage of a method runs: the trained model, its step and the frozen nets."""

    model: nn.Module
    step_fn: Callable
    frozen: tuple
    config: object


def _boot(teacher, device, overrides) -> TrainHandle:
    from methods.boot import BOOT

    m = BOOT(teacher, cfgs.replace(BOOT.Config(), overrides), device)
    return TrainHandle(m.student, m.loss, (teacher.net,), m.config)


def _progressive(teacher, device, overrides) -> TrainHandle:
    """The first round (start_steps -> start_steps / 2) on random data in the data range:
    the values of x do not change the cost of a step."""
    from methods.progressive import Progressive, _trainable_copy

    m = Progressive(teacher, cfgs.replace(Progressive.Config(), overrides), device)
    student, n = _trainable_copy(teacher), m.config.start_steps // 2
    x = torch.rand((512,) + teacher.sample_shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    step = m._loss_fn(teacher, student, x.to(device), teacher.schedule.timesteps(n),
                      teacher.schedule.timesteps(2 * n))
    return TrainHandle(student.net, step, (), m.config)


TRAINED = {"boot": _boot, "progressive": _progressive}


def step_flops(handle: TrainHandle, device: torch.device, bf16: bool) -> float:
    """FLOPs of one eager training step (forward and backward), counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    gen = torch.Generator().manual_seed(1)
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            losses, _ = handle.step_fn(0, gen)
        losses.float().mean().backward()
    handle.model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


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


def _block(trainer, step_fn, steps: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` steps of the real loop."""
    trainer.cfg = dataclasses.replace(trainer.cfg, iterations=trainer.step + steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    trainer.fit(step_fn)
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
    overrides = {"checkpoint_every": 0, "eval_every": 0, **overrides}
    handle = TRAINED[method](teacher, device, overrides)
    cfg = handle.config
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    flops = step_flops(handle, device, bf16)
    if log_fn is not None:  # whole logging periods per block, so a block logs as often as a run does
        steps, warmup = _round_up(steps, cfg.log_every), _round_up(max(warmup, 1), cfg.log_every)
    switch = _SwitchLog(log_fn)
    ctx = DistillContext(log=switch, device=device, seed=0, workdir=workdir, progress=False)
    trainer = Trainer(handle.model, cfg, ctx, frozen=handle.frozen)
    start = time.perf_counter()
    _block(trainer, handle.step_fn, max(warmup, 1), device)  # compile, cuDNN autotuning, allocator
    warm_seconds = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    plain, logged = [], []
    for _ in range(blocks):
        switch.on = False
        plain.append(_block(trainer, handle.step_fn, steps, device))
        if log_fn is not None:
            switch.on = True
            logged.append(_block(trainer, handle.step_fn, steps, device))
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
