"""``bench sweep``: Ray Tune over ``bench.run.run()``, one MLflow parent run, one child run per trial.

The search algorithm (Optuna TPE by default), the scheduler (ASHA) and Ray's fault tolerance
(FailureConfig retries, ``Tuner.restore`` for ``--resume``) are Ray Tune's; this module maps a
spec onto them and keeps the MLflow side consistent: the parent run is reopened on resume,
trials nest under it through the ``mlflow.parentRunId`` tag, the best trial is tagged, and child
runs left open by a killed trial are closed as KILLED (their metrics stay).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Optional

from bench.errors import BenchError
from sweeps.spec import TRIAL_CPU_WITH_WORKERS, SweepSpec

STATE = "bench_sweep.json"  # in the Ray experiment folder: the parent run and the store


@dataclasses.dataclass
class SweepResult:
    parent_run_id: str
    best_run_id: Optional[str]
    best_config: dict
    best_value: float
    trials: int
    completed: int
    stopped_early: int  # by ASHA
    cut_by_budget: int  # still running when the time budget ran out
    errored: int
    seconds: float


def param_space(spec: SweepSpec) -> dict:
    """The spec's space as Ray Tune domains (grid: every choice list becomes a grid axis)."""
    from ray import tune

    makers = {"choice": lambda a: tune.choice(list(a)), "uniform": lambda a: tune.uniform(*a),
              "loguniform": lambda a: tune.loguniform(*a), "randint": lambda a: tune.randint(*a)}
    if spec.search == "grid":
        return {k: tune.grid_search(list(args)) for k, (_, args) in spec.space.items()}
    return {k: makers[kind](args) for k, (kind, args) in spec.space.items()}


def absolute_uri(uri: str) -> str:
    """Trials run in their own working folders (and maybe on other nodes): no relative paths."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def sweep(spec: SweepSpec, address: Optional[str] = None, num_samples: Optional[int] = None,
          resume: bool = False, tracking_uri: Optional[str] = None, verbose: int = 1) -> SweepResult:
    """Run (or resume) the sweep; returns the best trial and the trial counts."""
    from bench.tracking import mlflow_run, resolve_uri

    spec = dataclasses.replace(spec, num_samples=num_samples or spec.num_samples)
    exp_dir = spec.storage() / spec.name
    state = _load_state(exp_dir, resume)
    uri = absolute_uri(resolve_uri(tracking_uri or state.get("tracking_uri")))
    experiment = spec.run.get("experiment", "distill-bench")
    start = time.perf_counter()
    _init_ray(address, verbose)
    with mlflow_run(experiment, uri, run_name=spec.name, run_id=state.get("parent_run_id"),
                    tags={"sweep.name": spec.name, "sweep.role": "parent"}) as parent:
        if not resume:
            _log_spec(spec, exp_dir)
            exp_dir.mkdir(parents=True, exist_ok=True)
            (exp_dir / STATE).write_text(json.dumps({"parent_run_id": parent.info.run_id,
                                                     "tracking_uri": uri}))
        grid = _tuner(spec, parent.info.run_id, uri, exp_dir, resume, verbose).fit()
        result = _summarise(spec, grid, parent.info.run_id, uri, time.perf_counter() - start)
        _log_summary(spec, grid, result)
    return result


def _load_state(exp_dir: Path, resume: bool) -> dict:
    state_file = exp_dir / STATE
    if resume:
        if not state_file.is_file():
            raise BenchError(f"nothing to resume: {state_file} does not exist; run without --resume")
        return json.loads(state_file.read_text())
    if state_file.exists():
        raise BenchError(f"sweep folder {exp_dir} already holds a sweep; add --resume to continue it, "
                         f"or change name: / storage_path: in the spec")
    return {}


def _init_ray(address: Optional[str], verbose: int) -> None:
    # one checkpoint per evaluation period is what we want; Ray warns about it without this
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from bench.parallel import init_ray

    init_ray(address, log_to_driver=verbose > 1)


def _tuner(spec: SweepSpec, parent_run_id: str, uri: str, exp_dir: Path, resume: bool, verbose: int):
    from ray import tune

    from sweeps.trial import run_trial

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec, parent_run_id=parent_run_id, tracking_uri=uri),
        trial_resources(spec))
    if resume and tune.Tuner.can_restore(str(exp_dir)):
        # finished trials keep their results; unfinished and errored ones continue from checkpoints
        return tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, resume_errored=True)
    tune_config = tune.TuneConfig(
        metric=spec.objective, mode=spec.mode, search_alg=_searcher(spec), scheduler=_scheduler(spec),
        num_samples=spec.num_samples, max_concurrent_trials=spec.max_concurrent,
        time_budget_s=spec.time_budget_s, reuse_actors=True)
    run_config = tune.RunConfig(
        name=spec.name, storage_path=str(spec.storage()), verbose=min(verbose, 1),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        # not 1: the experiment state on disk may still name the previous checkpoint when the
        # driver dies, and --resume fails on a checkpoint already deleted (seen with 1)
        checkpoint_config=tune.CheckpointConfig(num_to_keep=3))
    return tune.Tuner(trainable, param_space=param_space(spec), tune_config=tune_config,
                      run_config=run_config)


def trial_resources(spec: SweepSpec) -> dict[str, float]:
    """What a trial reserves itself; with workers, they reserve their own (cpus_per_worker and
    gpus_per_worker each, through Ray Train) and the trial little."""
    workers = spec.resources.get("workers", spec.run.get("workers", 1))
    cpu = spec.resources.get("cpu", TRIAL_CPU_WITH_WORKERS if workers > 1 else 1)
    return {"cpu": cpu, "gpu": spec.resources.get("gpu", 0)}


def _searcher(spec: SweepSpec):
    if spec.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=spec.seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=spec.seed)


def _scheduler(spec: SweepSpec):
    if spec.scheduler.type == "none":
        return None
    from sweeps.asha import RecordingASHA

    # trials report `step` = training iteration; the final evaluation comes one step after the
    # last, so max_t is only a ceiling for the rungs, never a reason to stop a trial
    return RecordingASHA(str(spec.storage() / spec.name), time_attr="step", max_t=10**9,
                         grace_period=spec.scheduler.grace_period,
                         reduction_factor=spec.scheduler.reduction_factor)


def _log_spec(spec: SweepSpec, exp_dir: Path) -> None:
    import mlflow

    params = {"sweep.method": spec.method, "sweep.teacher": spec.teacher,
              "sweep.objective": spec.objective, "sweep.mode": spec.mode, "sweep.search": spec.search,
              "sweep.scheduler": spec.scheduler.type, "sweep.num_samples": spec.num_samples,
              "sweep.max_concurrent": spec.max_concurrent, "sweep.storage": str(exp_dir),
              **{f"sweep.space.{k}": f"{kind}{tuple(args)}" for k, (kind, args) in spec.space.items()},
              **{f"sweep.set.{k}": v for k, v in spec.set.items()},
              **{f"sweep.run.{k}": v for k, v in spec.run.items()}}
    mlflow.log_params(params)
    if spec.source and Path(spec.source).is_file():
        mlflow.log_artifact(spec.source)


def _summarise(spec: SweepSpec, grid, parent_run_id: str, uri: str, seconds: float) -> SweepResult:
    """Counts and the best completed trial (a trial ASHA stopped never counts as best: its last
    value is a quick FID, not the final evaluation)."""
    from sweeps.asha import stopped_trials

    results = [grid[i] for i in range(len(grid))]
    done = [r for r in results if r.error is None and (r.metrics or {}).get("final") == 1]
    sign = 1 if spec.mode == "min" else -1
    best = min(done, key=lambda r: sign * r.metrics[spec.objective], default=None)
    errored = sum(r.error is not None for r in results)
    by_asha = stopped_trials(spec.storage() / spec.name)
    ids = {(r.metrics or {}).get("trial_id") for r in results}
    best_run = best.metrics["run_id"] if best else None
    _close_children(parent_run_id, uri, best_run, by_asha)
    early = len(by_asha & ids)
    return SweepResult(
        parent_run_id=parent_run_id, best_run_id=best_run,
        best_config=dict(best.config) if best else {},
        best_value=best.metrics[spec.objective] if best else math.nan,
        trials=len(results), completed=len(done), stopped_early=early,
        cut_by_budget=len(results) - len(done) - errored - early, errored=errored, seconds=seconds)


def _close_children(parent_run_id: str, uri: str, best_run_id: Optional[str], by_asha: set[str]) -> None:
    """Tag the best child and why the others have no final evaluation; a child a killed trial
    left RUNNING is closed as KILLED (its metrics stay)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_run(parent_run_id).info.experiment_id
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                  max_results=10_000)
    for child in children:
        run_id, status = child.info.run_id, child.info.status
        if status != "FINISHED" and child.data.tags.get("sweep.trial_id") in by_asha:
            client.set_tag(run_id, "sweep.stopped_by", "scheduler (ASHA)")
            client.set_terminated(run_id, "KILLED")  # stopped, not broken, whatever MLflow saw
        elif status in ("RUNNING", "KILLED"):
            client.set_tag(run_id, "sweep.stopped_by", "time budget, or a killed driver")
            client.set_terminated(run_id, "KILLED")
        client.set_tag(run_id, "sweep.best", str(run_id == best_run_id).lower())


def _log_summary(spec: SweepSpec, grid, result: SweepResult) -> None:
    import tempfile

    import mlflow

    key = f"best_{spec.metric}_nfe{spec.nfe}"
    metrics = {"sweep/trials": result.trials, "sweep/completed": result.completed,
               "sweep/stopped_early": result.stopped_early, "sweep/cut_by_budget": result.cut_by_budget,
               "sweep/errored": result.errored,
               "sweep/seconds": result.seconds}
    if result.best_run_id:
        metrics[key] = result.best_value
        mlflow.set_tags({"sweep.best_run_id": result.best_run_id,
                         **{f"best.{k}": str(v) for k, v in result.best_config.items()}})
    mlflow.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        frame = grid.get_dataframe()
        frame.to_csv(Path(tmp) / "trials.csv", index=False)
        mlflow.log_artifact(str(Path(tmp) / "trials.csv"))
