"""Synthetic training data: the teacher's own DDIM samples, for methods that need x but have
no data set (data-free use of progressive or consistency distillation).

Generated once per definition and cached in ``$BENCH_CACHE/synthetic`` together with what
they cost (seconds, teacher forward passes), so a run that reads them from the cache still
reports the full cost of its data.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from bench.cache import cache_file, definition_array
from bench.files import save_npz_atomic
from bench.teachers.base import Teacher

SEED_OFFSET = 0xDA7A  # synthetic data use seeds disjoint from the evaluated ones


def synthetic_data(teacher: Teacher, n: int, steps: int, seed: int, device) -> tuple[torch.Tensor, dict]:
    """n teacher DDIM-``steps`` samples and their cost: ``data_seconds``, ``data_teacher_forwards``."""
    from bench.evaluator import SampleSpec, generate
    from bench.sampling import SAMPLER_VERSION, teacher_sampler

    definition = {"teacher": teacher.fingerprint(), "n": n, "steps": steps, "seed": seed,
                  "sampler": SAMPLER_VERSION}
    path = cache_file("synthetic", definition)
    if path.is_file():
        with np.load(path) as d:
            x, seconds = torch.from_numpy(d["x"]), float(d["seconds"])
    else:
        start = time.perf_counter()
        spec = SampleSpec(teacher.sample_shape, n, seed + SEED_OFFSET, 250, torch.device(device))
        with torch.no_grad():
            x = generate(teacher_sampler(teacher, steps), spec).samples
        seconds = time.perf_counter() - start
        save_npz_atomic(path, x=x.numpy(), seconds=seconds, definition=definition_array(definition))
    return x, {"data_seconds": seconds, "data_teacher_forwards": float(n * min(steps, teacher.T))}



def training_data(teacher: Teacher, data: str, n: int, steps: int, seed: int, device) -> tuple[torch.Tensor, dict]:
    """(x, cost) for a method that trains on data: the teacher's registered data set (``data`` =
    'real'), or ``n`` of its own DDIM-``steps`` samples ('synthetic', cached and counted)."""
    from bench.errors import BenchError

    if data == "real":
        if teacher.dataset is None:
            raise BenchError("this teacher has no registered data set; use --set data=synthetic")
        return teacher.dataset(), {}
    return synthetic_data(teacher, n, steps, seed, device)


def with_data_cost(cost: dict, data_cost: dict) -> dict:
    """Training cost plus what making the data cost: synthetic samples' teacher forwards count
    toward the method's teacher forwards, so data-free and data-fed runs compare fairly."""
    return {**cost, "teacher_forwards": cost.get("teacher_forwards", 0.0)
            + data_cost.get("data_teacher_forwards", 0.0), **data_cost}
