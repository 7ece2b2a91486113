"""``run()``: the one entry point that the CLI and sweeps call.

Data flows one way: config -> method (uses teacher, schedule) -> evaluator -> tracking.
Nothing here knows which method or teacher it runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from bench import config as cfgs
from bench.assemble import build_method, load_run_teacher, make_method, quick_eval, resolve_device, run_reference
from bench.checkpoints import read_checkpoint
from bench.errors import BenchError
from bench.method import DistillContext
from bench.run_config import RunConfig

__all__ = ["RunConfig", "RunHooks", "RunResult", "build_method", "make_method", "resolve_device", "run"]








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
    from bench.resume import hash_tags

    device = resolve_device(run_cfg.device)
    torch.manual_seed(run_cfg.seed)  # student initialisations: the same in a fresh or a reused process
    method_cls, method_cfg = build_method(run_cfg, dict(method_overrides))
    hooks = hooks or RunHooks()
    hooks = dataclasses.replace(hooks, tags={**hooks.tags, **hash_tags(run_cfg, method_cfg)})
    with contextlib.ExitStack() as held:  # a resumed run's claim, held until it ends
        if hooks.resume:
            hooks = _resume_point(hooks, run_cfg, held)
        if hooks.checkpoint:  # a truncated or foreign file fails here, before a run is opened
            read_checkpoint(hooks.checkpoint, mmap=True)
        teacher = load_run_teacher(run_cfg, device)
        method, run_cfg = make_method(run_cfg, method_cls, method_cfg, teacher, device)
        extractor = get_extractor(run_cfg.features or teacher.features, inception_weights=run_cfg.inception_weights,
                                  device=str(device))
        ref = _prepare(run_cfg, teacher, extractor, device)
        return _tracked(run_cfg, method, teacher, extractor, ref, device, progress, hooks)


def _tracked(run_cfg, method, teacher, extractor, ref, device, progress, hooks) -> RunResult:
    """The MLflow run: params, distillation, evaluation, artifacts."""
    from bench.summary import log_summary, run_name
    from bench.tracking import tracked_run

    # mlflow is imported only now: a bad teacher, NFE or reference fails before its ~3 s import
    label = _label(run_cfg, method)
    with tracked_run(run_cfg.experiment, run_cfg.tracking_uri,
                     hooks.run_name or run_name(label, run_cfg.teacher, run_cfg.seed), dict(hooks.tags),
                     hooks.run_id, system_metrics=run_cfg.system_metrics) as tracker:
        if hooks.on_start:
            hooks.on_start(tracker.run_id, tracker.workdir)
        params = _params(run_cfg, method, device, teacher, extractor)
        tracker.log_params({**params, "reference.resolved": ref.description, "reference.n": ref.n})
        ctx = DistillContext(log=_logger(tracker, hooks.on_metrics), device=device, seed=run_cfg.seed,
                             workdir=tracker.workdir, progress=progress, resume_from=hooks.checkpoint,
                             quick_eval=quick_eval(teacher, extractor, ref, run_cfg, device),
                             teacher_fault=teacher.nonfinite)
        cost = _distill(run_cfg, method, ctx, tracker)
        rows = _evaluate_all(run_cfg, method, teacher, extractor, ref, device, progress)
        for ev in rows:  # only now: an evaluation that fails at any NFE logs no result at all
            tracker.log_metrics(ev.metrics(), step=ev.nfe)
            if hooks.on_metrics:
                hooks.on_metrics({"nfe": ev.nfe, **ev.metrics()}, None)
        log_summary(tracker, label, run_cfg.teacher, [ev.row() for ev in rows], cost, extractor.name)
        _log_artifacts(run_cfg, method, params, rows, teacher, tracker)
    return RunResult(tracker.run_id, [r.row() for r in rows], cost, extractor.name,
                     None if tracker.synced else str(tracker.spool))


def _prepare(run_cfg: RunConfig, teacher, extractor, device):
    """Every check that needs no trained student, and the reference, before the MLflow run
    opens: a mistake there costs no distillation and leaves no empty FAILED run behind."""
    from bench.eval_checks import check_evaluation

    fault = teacher.nonfinite()
    if fault:
        raise BenchError(f"teacher {run_cfg.teacher} ({teacher.provenance.source}) gives non-finite output: "
                         f"{fault}; no training or evaluation of it can give a valid number: check its weights")
    check_evaluation(run_cfg.num_samples, extractor.dim, run_cfg.metrics,
                     reference_has_features=not run_cfg.reference.startswith("stats:"))
    if run_cfg.clip_model:
        from bench.clip_score import check_clip_model

        if teacher.text is None:
            raise BenchError(f"--clip-model scores text-to-image runs; teacher {run_cfg.teacher} has no prompts")
        check_clip_model(run_cfg.clip_model)
    return run_reference(run_cfg, teacher, extractor, device)


def _label(run_cfg: RunConfig, method) -> str:
    """``method[:variant]``, and `` w=<scale>`` for a guided run: reports list each as a method
    of its own (the guidance scale is a run setting, not part of the method's config)."""
    label = ":".join(filter(None, (run_cfg.method, method.variant())))
    return label if run_cfg.guidance_scale == 1.0 else f"{label} w={run_cfg.guidance_scale:g}"


def _params(run_cfg: RunConfig, method, device, teacher, extractor) -> dict:
    return {"method": run_cfg.method, "label": _label(run_cfg, method), "teacher": run_cfg.teacher,
            "seed": run_cfg.seed, "device": str(device), "n": run_cfg.num_samples, "batch_size": run_cfg.batch_size,
            "nfe": ",".join(map(str, run_cfg.nfe)), "feature_extractor": extractor.name,
            "metrics": ",".join(run_cfg.metrics), "reference": run_cfg.reference,
            "workers": run_cfg.workers, "gpus_per_worker": run_cfg.gpus_per_worker,
            "guidance_scale": run_cfg.guidance_scale, **({"prompts": run_cfg.prompts} if run_cfg.prompts else {}),
            **teacher.provenance.as_params(), **cfgs.to_params(method.config, "method.")}




def _distill(run_cfg: RunConfig, method, ctx: DistillContext, tracker) -> dict[str, float]:
    start = time.perf_counter()
    if run_cfg.workers > 1:
        from bench.parallel import distill_on_workers

        cost = distill_on_workers(run_cfg, method, ctx)
    else:
        cost = dict(method.distill(ctx))
    cost["distill_seconds"] = time.perf_counter() - start
    tracker.log_metrics(cost)
    return cost


def _resume_point(hooks: RunHooks, run_cfg: RunConfig, held: contextlib.ExitStack) -> RunHooks:
    """``--resume``: the run to reopen (None: a new one, e.g. a re-evaluation), its checkpoint,
    and the claim on it, held in ``held``."""
    from bench.resume import resume_point

    point = resume_point(hooks.resume, run_cfg, dict(hooks.tags), held, hooks.checkpoint)
    return dataclasses.replace(hooks, run_id=point.run_id, checkpoint=point.checkpoint,
                               tags={**hooks.tags, **point.tags})


def _logger(tracker, listener):
    def log(metrics: dict, step: int) -> None:
        tracker.log_metrics(metrics, step=step)
        if listener:
            listener(metrics, step)

    return log




def _fidelity_anchor(run_cfg, teacher, device) -> Optional[torch.Tensor]:
    """The teacher's many-step DDIM samples for the run's seeds (None if switched off)."""
    from bench.eval_checks import check_finite
    from bench.evaluator import SampleSpec, generate
    from bench.sampling import teacher_sampler

    if run_cfg.fidelity_steps <= 0 or run_cfg.fidelity_samples <= 0:
        return None
    n = min(run_cfg.num_samples, run_cfg.fidelity_samples)
    spec = SampleSpec.of(teacher, n, run_cfg.seed, run_cfg.batch_size, device)
    with torch.no_grad():
        samples = generate(teacher_sampler(teacher, run_cfg.fidelity_steps), spec).samples
    check_finite(samples, f"teacher DDIM-{run_cfg.fidelity_steps} samples (the fidelity anchor)")
    return samples


def _evaluate_all(run_cfg, method, teacher, extractor, ref, device, progress):
    """Every NFE, scored by the shared evaluator on the same seeds; a non-finite sample, feature
    or score anywhere is one error naming the method, teacher and NFE."""
    from tqdm.auto import tqdm

    from bench.eval_checks import NonFinite
    from bench.evaluator import SampleSpec, evaluate
    from bench.nfe import CountedSampler

    spec = SampleSpec.of(teacher, run_cfg.num_samples, run_cfg.seed, run_cfg.batch_size, device)
    per_sample = None
    if run_cfg.clip_model:  # checked before distillation (_prepare)
        from bench.clip_score import clip_scorer

        per_sample = {"clip_score": clip_scorer(run_cfg.clip_model, teacher.text.prompts, device)}
    rows = []
    try:
        anchor = _fidelity_anchor(run_cfg, teacher, device)
        with tqdm(total=len(run_cfg.nfe) * spec.n, disable=not progress, unit="img", desc="sampling") as bar:
            for k in run_cfg.nfe:
                bar.set_postfix(nfe=k)
                sampler = CountedSampler(method.sampler(k))
                with torch.no_grad():
                    ev = evaluate(sampler, spec, ref, extractor, nfe=k, metrics=run_cfg.metrics, anchor=anchor,
                                  data_range=teacher.data_range, keep_samples=run_cfg.keep_samples,
                                  progress=bar.update, per_sample=per_sample)
                rows.append(dataclasses.replace(ev, nfe_counted=_counted(sampler, run_cfg.method, k)))
    except NonFinite as exc:
        raise BenchError(f"{run_cfg.method} on teacher {run_cfg.teacher}: {exc}; no result was logged "
                         f"and the run ends FAILED") from None
    return rows


def _counted(sampler, method: str, nfe: int) -> int:
    """The network calls the sampler made per batch; a sampler that spent other than the NFE it
    is logged at would put its FID at the wrong place on every FID-vs-NFE axis."""
    try:
        calls = sampler.counted()
    except ValueError as exc:
        raise BenchError(f"{method} at NFE {nfe}: {exc}; its cost must not depend on the batch") from None
    if calls != nfe:
        raise BenchError(f"{method}'s sampler for NFE {nfe} made {calls} network calls per batch; "
                         f"no result was logged: report this as a bug in the method")
    return calls


def _log_artifacts(run_cfg, method, params, rows, teacher, tracker) -> None:
    import pandas as pd

    from bench.artifacts import save_grid, save_samples
    from bench.files import no_space_guard
    from bench.student_model import add_student, register_logged

    with tempfile.TemporaryDirectory() as tmp, no_space_guard(Path(tmp), "the run's artifacts"):
        out = Path(tmp)
        resolved = {"run": dataclasses.asdict(run_cfg), "method_config": dataclasses.asdict(method.config),
                    "params": params}
        (out / "config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True, default=str))
        for ev in rows:
            save_grid(ev.samples, out / "grids" / f"nfe_{ev.nfe}.png", teacher.data_range,
                      title=f"{run_cfg.method}, NFE {ev.nfe}")
            save_samples(ev.samples, out / "samples" / f"nfe_{ev.nfe}.npz")
        pd.DataFrame([ev.row() for ev in rows]).to_csv(out / "summary.csv", index=False)
        per_class = [{"nfe": ev.nfe, "label": c, "fid": fid} for ev in rows for c, fid in ev.per_class_fid.items()]
        if per_class:  # conditional teachers: FID of each class against that class's reference
            pd.DataFrame(per_class).to_csv(out / "per_class_fid.csv", index=False)
        method.save_artifacts(out)
        with tempfile.TemporaryDirectory() as scratch:
            student = add_student(method, teacher, out, Path(scratch), params)
        tracker.log_artifacts(out)
    if student and run_cfg.register:
        register_logged(tracker, run_cfg.register)
