"""Data-parallel scaling for ``bench perf --sections scale``: training images/s on 1, 2, ... Ray
Train workers (bench/parallel.py's path: the shared loop, its batch split into streams, one
gradient all-reduce per update) at the same global batch, and the efficiency against linear,
images/s(N) / (N x images/s(1)).

Every count runs through Ray Train, one worker included, so all pay the same overheads; each
worker builds the teacher and the method's training stage itself, and rank 0 times blocks of
steps of the real loop (medians over blocks, as the train section).
"""
from __future__ import annotations

import statistics
import tempfile

import torch


def _worker(cfg: dict) -> None:
    import ray.train
    import ray.train.torch

    from bench.method import DistillContext
    from bench.train import Trainer
    from perf.models import load
    from perf.train import _block, training_stage

    context = ray.train.get_context()
    device = ray.train.torch.get_device() if cfg["gpus_per_worker"] else torch.device("cpu")
    torch.set_num_threads(max(1, int(cfg["cpus_per_worker"])))
    torch.manual_seed(0)
    teacher, _ = load(cfg["teacher"], cfg["arch"], device)
    stage = training_stage(cfg["method"], teacher, device, cfg["overrides"])
    ctx = DistillContext(log=lambda m, s: None, device=device, seed=0, workdir=cfg["workdir"], progress=False,
                         rank=context.get_world_rank(), world=context.get_world_size())
    trainer = Trainer(stage, ctx)
    _block(trainer, cfg["warmup"], device)
    seconds = [_block(trainer, cfg["steps"], device) for _ in range(cfg["blocks"])]
    if context.get_world_rank() == 0:
        cfg["results"].put(statistics.median(seconds))


def measure_scaling(method: str, teacher, arch, overrides: dict, workers: tuple[int, ...], steps: int,
                    warmup: int, blocks: int, gpus_per_worker: float = 0.0,
                    cpus_per_worker: float = 1.0) -> dict[str, float]:
    """``{method}_scale_images_per_second_w{N}`` and ``..._efficiency_w{N}`` for each N."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    from bench.parallel import init_ray

    init_ray()
    overrides = {"checkpoint_every": 0, "eval_every": 0, **overrides}
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for n in workers:
            payload = {"method": method, "teacher": teacher, "arch": arch, "overrides": overrides, "steps": steps,
                       "warmup": max(warmup, 1), "blocks": blocks, "gpus_per_worker": gpus_per_worker,
                       "cpus_per_worker": cpus_per_worker, "workdir": tmp,
                       "results": Queue(actor_options={"num_cpus": 0})}
            resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
            scaling = ScalingConfig(num_workers=n, use_gpu=gpus_per_worker > 0, resources_per_worker=resources)
            TorchTrainer(_worker, train_loop_config=payload, scaling_config=scaling,
                         run_config=RunConfig(name=f"scale-{n}", storage_path=tmp)).fit()
            step_seconds = payload["results"].get(timeout=60)
            out[f"{method}_scale_images_per_second_w{n}"] = overrides["batch_size"] / step_seconds
    base = out.get(f"{method}_scale_images_per_second_w1")
    for n in workers:
        if base:
            out[f"{method}_scale_efficiency_w{n}"] = out[f"{method}_scale_images_per_second_w{n}"] / (n * base)
    return out
