"""Sampling throughput by method and NFE, evaluator throughput and the reference-cache speed-up.

Samplers run interleaved on one noise batch (warm-up first, device synchronised, median of
repeats), so machine noise hits them alike and their ratio is what we report. Each method's
samplers are those of a freshly built method (weights do not change the cost; an untrained
progressive distillation samples with its teacher, which costs what its students cost). The
baseline is the teacher's own DDIM-k (``ddim_k``), the sampler of the core, not of a method.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Iterator, Sequence

import torch

from bench.errors import BenchError, first_line


def _timed(fn: Callable, noise: torch.Tensor, device: torch.device, bf16: bool) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        fn(noise)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def samplers(methods: Sequence[str], teacher, device: torch.device, nfes: Sequence[int],
             compiled: bool) -> dict[str, Callable]:
    """``{method}_{k}step`` for every method and every NFE of ``nfes`` it serves (one-step ones
    also torch.compiled if asked: ``..._compiled``), and the teacher's DDIM-k as ``ddim_k``."""
    from bench.accel import compiled_sampler
    from bench.registry import METHODS
    from bench.sampling import teacher_sampler

    out: dict[str, Callable] = {}
    for name in methods:
        cls = METHODS.get(name)
        method = cls(teacher, cls.Config(), device)
        for k in nfes:
            try:
                method.check_nfe(k)
            except BenchError:
                continue
            out[f"{name}_{k}step"] = method.sampler(k)
            if compiled and k == 1:
                out[f"{name}_{k}step_compiled"] = compiled_sampler(method.sampler(k), device)
    for k in nfes:
        out[f"ddim_{k}"] = teacher_sampler(teacher, k)
    return out


def measure_sampling(methods: Sequence[str], teacher, device: torch.device, nfes: Sequence[int],
                     batch: int, repeats: int, compiled: bool, bf16: bool) -> dict[str, float]:
    """Images/s of every sampler at ``batch``; the first call of each is the warm-up (and,
    for a compiled sampler, the compile: reported as ``compile_seconds``). The ratio is the
    first method's one-step sampler against the teacher's DDIM-50."""
    fns = samplers(methods, teacher, device, nfes, compiled)
    noise = torch.randn((batch,) + teacher.sample_shape, generator=torch.Generator().manual_seed(0)).to(device)
    out: dict[str, float] = {}
    for name, fn in list(fns.items()):
        try:
            warm = _timed(fn, noise, device, bf16)
        except Exception as exc:  # a compiler failure must not cost the eager figures (seen on an H200)
            if not name.endswith("_compiled"):
                raise
            print(f"bench perf: warning: {name} failed to compile, measured eager only "
                  f"({type(exc).__name__}: {first_line(exc, 200)})", file=sys.stderr)
            del fns[name]
            continue
        _timed(fn, noise, device, bf16)  # CUDA graphs record on the second call
        if name.endswith("_compiled"):
            out["compile_seconds"] = warm
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn, noise, device, bf16))
    for name, ts in times.items():
        out[f"images_per_second_{name}"] = batch / statistics.median(ts)
    one_step = next((f"{m}_1step" for m in methods if f"{m}_1step" in fns), None)
    if one_step and "ddim_50" in fns:
        out["ratio_1step_vs_ddim50"] = statistics.median(times["ddim_50"]) / statistics.median(times[one_step])
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
    """Evaluations of a one-step sampler (the teacher's DDIM-1: one network evaluation, as a
    one-step student) on the digits teacher, as ``bench run`` does them: data-free reference
    (the teacher's DDIM samples), then FID/KID/PR on n samples. The first builds the
    reference, the later ones read it from the cache."""
    from bench.evaluator import SampleSpec, evaluate
    from bench.features import get_extractor
    from bench.reference import build_reference
    from bench.sampling import teacher_sampler
    from bench.teachers import load_teacher

    teacher = load_teacher("digits", device=str(device)).to(device)
    extractor = get_extractor(teacher.features, device=str(device))
    sampler, spec = teacher_sampler(teacher, 1), SampleSpec(teacher.sample_shape, n, 0, batch, device)

    def once() -> tuple[float, float]:
        start = time.perf_counter()
        ref = build_reference("teacher", teacher, extractor, n=ref_n, steps=ref_steps, seed=0,
                              batch_size=batch, device=device)
        mid = time.perf_counter()
        with torch.no_grad():
            evaluate(sampler, spec, ref, extractor, keep_samples=0)
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
