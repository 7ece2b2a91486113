"""Data-parallel distillation on Ray Train: ``bench run --workers N [--gpus-per-worker G]``.

``run()`` opens the MLflow run and prepares the reference as always; only the distillation
moves: a ``TorchTrainer`` starts N workers (gloo on CPUs, NCCL on GPUs; locally or on the
cluster at ``--address``), each of which builds the teacher and the method as ``run()`` does
(the same seed, so the same initial weights) and runs the method's own ``distill`` as rank r of
N. The shared loop (bench.train) splits every batch into streams (bench/streams.py): each
worker draws its rows from its own generators, gradients are summed over the workers, and
the global batch stays ``batch_size``, so a run on N workers computes what one process
computes with N micro-batches. Rank 0 writes the checkpoints and sends its ``train/*``
metrics through a Ray queue to the driver, which logs them to the run as a one-process run
does: the run has one writer, and what listens to it (a sweep's ASHA) hears the same.

After training the driver continues the method from the final checkpoint (nothing is left
to train, so this only loads it) and evaluates on its own device. The evaluation is not split
over the workers: it is a few percent of a distillation's time, and per-sample seeds make it
the same wherever it runs.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Optional

import torch

from bench.checkpoints import newest_checkpoint, read_checkpoint
from bench.errors import BenchError, first_line
from bench.method import DistillContext
from bench.streams import Streams


def distill_on_workers(run_cfg, method, ctx: DistillContext) -> dict[str, float]:
    """Train ``method`` on ``run_cfg.workers`` Ray Train workers; returns its cost metrics."""
    cfg = method.config
    if not hasattr(cfg, "micro_batches"):
        raise BenchError(f"{run_cfg.method} does not train, so it has nothing to split over workers; "
                         f"run it without --workers")
    if not cfg.checkpoint_every:
        raise BenchError("--workers needs checkpoints (the driver reads the trained networks from the "
                         "final one); set checkpoint_every > 0")
    # rank 0's streams, built here only to check the layout before any worker starts
    layout = Streams(ctx.seed, cfg.batch_size, cfg.micro_batches, world=run_cfg.workers)
    if ctx.resume_from:
        layout.load(Streams.saved(read_checkpoint(ctx.resume_from, mmap=True)), f"checkpoint {ctx.resume_from}")
    init_ray(run_cfg.address)
    from ray.util.queue import Queue

    payload = {"run_cfg": run_cfg, "method_cls": type(method), "method_cfg": cfg,
               "metrics": Queue(actor_options={"num_cpus": 0}),  # rank 0's train/* to this process
               "workdir": str(Path(ctx.workdir).resolve()), "seed": ctx.seed,  # workers' cwd is Ray's
               "resume_from": str(ctx.resume_from) if ctx.resume_from else None}
    _fit_relaying(run_cfg, payload, Path(ctx.workdir), ctx.log)
    final = newest_checkpoint(Path(ctx.workdir))
    if final is None:
        raise BenchError(f"the workers finished without a checkpoint in {ctx.workdir}")
    # the driver as rank 0 of the finished group: it loads the final state, with no step left
    # to train, and so never reaches a collective call
    done = dataclasses.replace(ctx, resume_from=final, world=run_cfg.workers, progress=False)
    return dict(method.distill(done))


def init_ray(address: Optional[str] = None, log_to_driver: bool = False) -> None:
    """A local Ray, or the cluster at ``address``; a Ray already started in this process (a sweep
    trial's, a test's) is used as it is. `bench run --workers`, sweeps and `bench perf` all start
    it here."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=log_to_driver,
                 configure_logging=True, logging_level="WARNING")
    except ConnectionError as exc:
        raise BenchError(f"cannot reach the Ray cluster at {address}: {first_line(exc)}; "
                         f"check --address (ray status on the head node prints it)") from None


def _fit_relaying(run_cfg, payload: dict, workdir: Path, log) -> None:
    """Train on the workers in a helper thread while this one logs what rank 0 sends."""
    import threading

    from ray.util.queue import Empty

    failure: list[BaseException] = []

    def fit():
        try:
            _fit(run_cfg, payload, workdir)
        except BaseException as exc:  # re-raised below, in the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=fit, name="bench-workers", daemon=True)
    worker.start()
    queue = payload["metrics"]
    while worker.is_alive() or not queue.empty():
        try:
            log(*queue.get(timeout=0.2))
        except Empty:
            continue
    if failure:
        raise failure[0]


def _fit(run_cfg, payload: dict, workdir: Path) -> None:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    gpus = run_cfg.gpus_per_worker
    scaling = ScalingConfig(num_workers=run_cfg.workers, use_gpu=gpus > 0,
                            resources_per_worker={"CPU": run_cfg.cpus_per_worker, **({"GPU": gpus} if gpus else {})})
    trainer = TorchTrainer(train_worker, train_loop_config=payload, scaling_config=scaling,
                           run_config=RunConfig(name="workers", storage_path=str((workdir / "ray").resolve()),
                                                failure_config=FailureConfig(max_failures=run_cfg.worker_retries)))
    try:
        trainer.fit()
    except Exception as exc:  # TrainingFailedError wraps the worker's own error
        raise BenchError(f"training on {run_cfg.workers} workers failed: {_worker_error(exc)}; the newest "
                         f"checkpoint in {workdir} is the last good state: continue with bench run --resume") \
            from None


def _worker_error(exc: BaseException) -> str:
    """The first line of the worker's own exception, under Ray's wrappers."""
    seen, found = set(), exc
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        if isinstance(found, BenchError):
            return str(found)
        found = getattr(found, "cause", None) or found.__cause__ or found.__context__
    return first_line(exc, 300)


def train_worker(payload: dict[str, Any]) -> None:
    """One Ray Train worker: the teacher and method as ``run()`` builds them, trained as rank r."""
    import ray.train
    import ray.train.torch

    from bench.assemble import load_run_teacher, make_method

    run_cfg, context = payload["run_cfg"], ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if run_cfg.gpus_per_worker else torch.device("cpu")
    torch.set_num_threads(max(1, int(run_cfg.cpus_per_worker)))
    torch.manual_seed(run_cfg.seed)  # as run(): every worker starts from the same weights
    teacher = load_run_teacher(run_cfg, device)
    method, run_cfg = make_method(run_cfg, payload["method_cls"], payload["method_cfg"], teacher, device)
    log, quick = (lambda metrics, step: None), None
    if rank == 0:
        log, quick = (lambda metrics, step: payload["metrics"].put((metrics, step))), _quick(run_cfg, teacher, device)
    workdir = Path(payload["workdir"])
    # a restarted worker group (worker_retries) continues from the run's own newest checkpoint
    resume = newest_checkpoint(workdir) or payload["resume_from"]
    ctx = DistillContext(log=log, device=device, seed=payload["seed"], workdir=workdir, progress=False,
                         quick_eval=quick, teacher_fault=teacher.nonfinite,
                         resume_from=Path(resume) if resume else None, rank=rank, world=world)
    method.distill(ctx)


def _quick(run_cfg, teacher, device):
    """Rank 0's quick evaluation during training (the reference is the driver's, from the cache)."""
    from bench.assemble import quick_eval, run_reference
    from bench.features import get_extractor

    extractor = get_extractor(run_cfg.features or teacher.features, inception_weights=run_cfg.inception_weights, device=str(device))
    return quick_eval(teacher, extractor, run_reference(run_cfg, teacher, extractor, device), run_cfg, device)
