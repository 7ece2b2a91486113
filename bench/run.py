"""``run()``: the one entry point that the CLI and sweeps call.

Data flows one way: config -> method (uses teacher, schedule) -> evaluator -> tracking.
Nothing here knows which method or teacher it runs.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from bench import config as cfgs
from bench.errors import BenchError
from bench.method import DistillContext
from bench.run_config import RunConfig

__all__ = ["RunConfig", "RunHooks", "RunResult", "build_method", "resolve_device", "run"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BenchError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda requested but no CUDA device is visible; use --device cpu")
    return device


def build_method(run_cfg: RunConfig, overrides: Mapping[str, Any]):
    """(method class, method config) with ``--set`` overrides applied; validates early."""
    from bench.registry import METHODS

    cls = METHODS.get(run_cfg.method)
    return cls, cfgs.replace(cls.Config(), overrides, what=f"{run_cfg.method} config")


@dataclasses.dataclass
class RunHooks:
    """How a caller (the CLI, a sweep trial) joins in: where the run lives in MLflow, where its
    training continues from, and who hears of it.

    ``on_start(run_id, workdir)`` is told the MLflow run and its work folder once they exist;
    ``on_metrics(metrics, step)`` sees everything logged during distillation (``train/*``,
    step = iteration) and then, with ``step=None``, each NFE's evaluation as ``{"nfe": k, ...}``.
    """

    run_name: Optional[str] = None
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    run_id: Optional[str] = None  # reopen this MLflow run instead of starting one
    # "auto": continue the newest unfinished run of this configuration from its newest
    # checkpoint (a fresh run if there is none); a run id: continue that run
    resume: Optional[str] = None
    checkpoint: Optional[Path] = None  # continue training from this file (else the run's newest)
    on_start: Optional[Callable[[str, Path], None]] = None
    on_metrics: Optional[Callable[[dict, Optional[int]], None]] = None


@dataclasses.dataclass
class RunResult:
    run_id: str
    rows: list[dict]
    distill_cost: dict[str, float]
    feature_extractor: str
    spool: Optional[str] = None  # where logged data wait if the MLflow store failed and is still down


def run(run_cfg: RunConfig, method_overrides: Mapping[str, Any] = (), progress: bool = True,
        hooks: Optional[RunHooks] = None) -> RunResult:
    """Distill (if the method trains), evaluate every NFE, log everything to one MLflow run."""
    from bench.features import get_extractor
    from bench.resume import HASH_TAG, config_hash
    from bench.teachers import load_teacher
    from bench.tracking import tracked_run

    device = resolve_device(run_cfg.device)
    torch.manual_seed(run_cfg.seed)  # student initialisations: the same in a fresh or a reused process
    method_cls, method_cfg = build_method(run_cfg, dict(method_overrides))
    hooks = hooks or RunHooks()
    key = config_hash(run_cfg, method_cfg)
    hooks = dataclasses.replace(hooks, tags={**hooks.tags, HASH_TAG: key})
    if hooks.resume:
        hooks = _resume_point(hooks, run_cfg, key)
    teacher = load_teacher(run_cfg.teacher, run_cfg.teacher_path, device=str(device)).to(device)
    method = method_cls(teacher, method_cfg, device)
    run_cfg = dataclasses.replace(run_cfg, nfe=run_cfg.nfe or method.default_nfe())
    for k in run_cfg.nfe:
        method.check_nfe(k)
    extractor = get_extractor(teacher.features, inception_weights=run_cfg.inception_weights,
                              device=str(device))
    # mlflow is imported only now: a bad teacher or NFE fails before its ~3 s import
    with tracked_run(run_cfg.experiment, run_cfg.tracking_uri, hooks.run_name, dict(hooks.tags),
                     hooks.run_id) as tracker:
        if hooks.on_start:
            hooks.on_start(tracker.run_id, tracker.workdir)
        params = _params(run_cfg, method_cfg, device, teacher, extractor)
        tracker.log_params(params)
        ref = _reference(run_cfg, teacher, extractor, device)
        tracker.log_params({"reference.resolved": ref.description, "reference.n": ref.n})
        ctx = DistillContext(log=_logger(tracker, hooks.on_metrics), device=device, seed=run_cfg.seed,
                             workdir=tracker.workdir, progress=progress, resume_from=hooks.checkpoint,
                             quick_eval=_quick_eval(teacher, extractor, ref, run_cfg, device))
        cost = _distill(method, ctx, tracker)
        rows = _evaluate_all(run_cfg, method, teacher, extractor, ref, device, progress, tracker)
        if hooks.on_metrics:
            for ev in rows:
                hooks.on_metrics({"nfe": ev.nfe, **ev.metrics()}, None)
        _log_artifacts(run_cfg, method, params, rows, teacher, tracker)
    return RunResult(tracker.run_id, [r.row() for r in rows], cost, extractor.name,
                     None if tracker.synced else str(tracker.spool))


def _params(run_cfg: RunConfig, method_cfg, device, teacher, extractor) -> dict:
    return {"method": run_cfg.method, "teacher": run_cfg.teacher, "seed": run_cfg.seed,
            "device": str(device), "n": run_cfg.num_samples, "batch_size": run_cfg.batch_size,
            "nfe": ",".join(map(str, run_cfg.nfe)), "feature_extractor": extractor.name,
            "metrics": ",".join(run_cfg.metrics), "reference": run_cfg.reference,
            **teacher.provenance.as_params(), **cfgs.to_params(method_cfg, "method.")}


def _reference(run_cfg: RunConfig, teacher, extractor, device):
    from bench.reference import build_reference

    return build_reference(run_cfg.reference, teacher, extractor, n=run_cfg.reference_samples,
                           steps=run_cfg.reference_steps, seed=run_cfg.seed,
                           batch_size=run_cfg.batch_size, device=device)


def _distill(method, ctx: DistillContext, tracker) -> dict[str, float]:
    start = time.perf_counter()
    cost = dict(method.distill(ctx))
    cost["distill_seconds"] = time.perf_counter() - start
    tracker.log_metrics(cost)
    return cost


def _resume_point(hooks: RunHooks, run_cfg: RunConfig, key: str) -> RunHooks:
    """``--resume``: the interrupted run to reopen and the checkpoint its training continues from."""
    from bench.checkpoints import newest_checkpoint, run_workdir
    from bench.resume import find_run
    from bench.tracking import resolve_uri

    found = find_run(hooks.resume, run_cfg.experiment, resolve_uri(run_cfg.tracking_uri), key)
    if found is None:
        print(f"bench: no interrupted run of this configuration in experiment {run_cfg.experiment!r}; "
              f"starting a new one", file=sys.stderr)
        return hooks
    ckpt = hooks.checkpoint or newest_checkpoint(run_workdir(found.info.run_id, found.data.tags))
    where = f"checkpoint {ckpt}" if ckpt else "the start (it saved no checkpoint)"
    print(f"bench: resuming MLflow run {found.info.run_id} from {where}", file=sys.stderr)
    return dataclasses.replace(hooks, run_id=found.info.run_id, checkpoint=ckpt)
def _logger(tracker, listener):
    def log(metrics: dict, step: int) -> None:
        tracker.log_metrics(metrics, step=step)
        if listener:
            listener(metrics, step)

    return log


def _quick_eval(teacher, extractor, ref, run_cfg, device):
    """FID of a sampler on n samples during training (the final evaluation's first n seeds);
    n is raised to the feature dimension where smaller, since FID is undefined below it."""
    from bench.evaluator import SampleSpec, evaluate

    def quick(sampler, n: int) -> float:
        spec = SampleSpec(teacher.sample_shape, max(n, extractor.dim, 2), run_cfg.seed, run_cfg.batch_size, device)
        with torch.no_grad():
            return evaluate(sampler, spec, ref, extractor, metrics=("fid",), keep_samples=0).fid

    return quick


def _fidelity_anchor(run_cfg, teacher, device) -> Optional[torch.Tensor]:
    """The teacher's many-step DDIM samples for the run's seeds (None if switched off)."""
    from bench.evaluator import SampleSpec, generate
    from bench.sampling import teacher_sampler

    if run_cfg.fidelity_steps <= 0 or run_cfg.fidelity_samples <= 0:
        return None
    n = min(run_cfg.num_samples, run_cfg.fidelity_samples)
    spec = SampleSpec(teacher.sample_shape, n, run_cfg.seed, run_cfg.batch_size, device)
    with torch.no_grad():
        return generate(teacher_sampler(teacher, run_cfg.fidelity_steps), spec).samples


def _evaluate_all(run_cfg, method, teacher, extractor, ref, device, progress, tracker):
    """Every NFE, scored by the shared evaluator on the same seeds; logged with step = NFE."""
    from tqdm.auto import tqdm

    from bench.evaluator import SampleSpec, evaluate

    anchor = _fidelity_anchor(run_cfg, teacher, device)
    spec = SampleSpec(teacher.sample_shape, run_cfg.num_samples, run_cfg.seed, run_cfg.batch_size, device)
    rows = []
    with tqdm(total=len(run_cfg.nfe) * spec.n, disable=not progress, unit="img", desc="sampling") as bar:
        for k in run_cfg.nfe:
            bar.set_postfix(nfe=k)
            with torch.no_grad():
                ev = evaluate(method.sampler(k), spec, ref, extractor, nfe=k, metrics=run_cfg.metrics,
                              anchor=anchor, data_range=teacher.data_range,
                              keep_samples=run_cfg.keep_samples, progress=bar.update)
            tracker.log_metrics(ev.metrics(), step=k)
            rows.append(ev)
    return rows


def _log_artifacts(run_cfg, method, params, rows, teacher, tracker) -> None:
    import pandas as pd

    from bench.artifacts import save_grid, save_samples

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        resolved = {"run": dataclasses.asdict(run_cfg), "method_config": dataclasses.asdict(method.config),
                    "params": params}
        (out / "config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True, default=str))
        for ev in rows:
            save_grid(ev.samples, out / "grids" / f"nfe_{ev.nfe}.png", teacher.data_range,
                      title=f"{run_cfg.method}, NFE {ev.nfe}")
            save_samples(ev.samples, out / "samples" / f"nfe_{ev.nfe}.npz")
        pd.DataFrame([ev.row() for ev in rows]).to_csv(out / "summary.csv", index=False)
        method.save_artifacts(out)
        tracker.log_artifacts(out)
