"""Sampling throughput by method and NFE, evaluator throughput and the reference-cache speed-up.

Samplers run interleaved on one noise batch (warm-up first, device synchronised, median of
repeats), so machine noise hits them alike and their ratio is what we report. The one-step
student is the method's freshly built one: weights do not change the cost. Progressive
distillation's k-step sampler is DDIM-k on a copy of the teacher's network, so its cost is
the ``ddim_k`` row.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from typing import Callable, Iterator, Sequence

import torch


def _timed(fn: Callable, noise: torch.Tensor, device: torch.device, bf16: bool) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        fn(noise)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def samplers(teacher, device: torch.device, nfes: Sequence[int], compiled: bool) -> dict[str, Callable]:
    """BOOT's one-step sampler (eager, and compiled if asked) and the teacher's DDIM-k."""
    from methods.boot import BOOT
    from methods.ddim import DDIM

    out = {"boot_1step": BOOT(teacher, BOOT.Config(), device).sampler(1)}
    if compiled:
        out["boot_1step_compiled"] = BOOT(teacher, BOOT.Config(compile=True), device).sampler(1)
    ddim = DDIM(teacher, DDIM.Config(), device)
    for k in nfes:
        out[f"ddim_{k}"] = ddim.sampler(k)
    return out


def measure_sampling(teacher, device: torch.device, nfes: Sequence[int], batch: int, repeats: int,
                     compiled: bool, bf16: bool) -> dict[str, float]:
    """Images/s of every sampler at ``batch``; the first call of each is the warm-up (and,
    for a compiled sampler, the compile: reported as ``compile_seconds``)."""
    fns = samplers(teacher, device, nfes, compiled)
    noise = torch.randn((batch,) + teacher.sample_shape, generator=torch.Generator().manual_seed(0)).to(device)
    out: dict[str, float] = {}
    for name, fn in fns.items():
        warm = _timed(fn, noise, device, bf16)
        _timed(fn, noise, device, bf16)  # CUDA graphs record on the second call
        if name.endswith("_compiled"):
            out["compile_seconds"] = warm
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn, noise, device, bf16))
    for name, ts in times.items():
        out[f"images_per_second_{name}"] = batch / statistics.median(ts)
    if "ddim_50" in fns:
        out["ratio_1step_vs_ddim50"] = statistics.median(times["ddim_50"]) / statistics.median(times["boot_1step"])
    return out


@contextlib.contextmanager
def _fresh_cache() -> Iterator[None]:
    """A private, empty $BENCH_CACHE: the first evaluation must really build its reference."""
    old = os.environ.get("BENCH_CACHE")
    with tempfile.TemporaryDirectory(prefix="bench-perf-cache-") as tmp:
        os.environ["BENCH_CACHE"] = tmp
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("BENCH_CACHE", None)
            else:
                os.environ["BENCH_CACHE"] = old


def measure_evaluation(device: torch.device, n: int, ref_n: int, ref_steps: int, batch: int,
                       repeats: int = 2) -> dict[str, float]:
    """Two evaluations of BOOT's one-step sampler on the digits teacher, as ``bench run`` does
    them: data-free reference (the teacher's DDIM samples) then FID/KID/PR on n samples.
    The first builds the reference, the later ones read it from the cache."""
    from bench.evaluator import evaluate
    from bench.features import get_extractor
    from bench.reference import build_reference
    from bench.teachers import load_teacher
    from methods.boot import BOOT

    teacher = load_teacher("digits", device=str(device)).to(device)
    extractor = get_extractor(teacher.features, device=str(device))
    sampler = BOOT(teacher, BOOT.Config(), device).sampler(1)

    def once() -> tuple[float, float]:
        start = time.perf_counter()
        ref = build_reference("teacher", teacher, extractor, ref_n, ref_steps, 0, batch, device)
        mid = time.perf_counter()
        with torch.no_grad():
            evaluate(sampler, 1, teacher.sample_shape, ref, extractor, n, 0, batch, device, keep_samples=0)
        return mid - start, time.perf_counter() - mid

    with _fresh_cache():
        first = once()
        later = [once() for _ in range(max(repeats, 1))]
    ref_s = statistics.median(r for r, _ in later)
    eval_s = statistics.median(e for _, e in later)
    x = torch.rand((batch,) + teacher.sample_shape) * 2 - 1
    extractor(x)  # warm-up
    start = time.perf_counter()
    extractor(x)
    feat_s = time.perf_counter() - start
    return {"reference_cold_seconds": first[0], "reference_cached_seconds": ref_s,
            "evaluation_first_seconds": sum(first), "evaluation_second_seconds": ref_s + eval_s,
            "reference_cache_speedup": sum(first) / (ref_s + eval_s),
            "evaluator_images_per_second": n / eval_s, "features_images_per_second": batch / feat_s}
