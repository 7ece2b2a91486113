"""One sweep trial: the same ``bench.run.run()`` as ``bench run``, reporting to Ray Tune as it trains.

What the trial reports (every result carries ``step`` for ASHA and the objective, e.g. ``fid@1``):
- during distillation, each quick FID (``train/fid``) as the objective, ``final = 0``: ASHA
  compares trials at the same training step, all on the same quick estimate;
- after the evaluation, the evaluated metric at the spec's NFE, ``final = 1``.
Each report during training carries a Tune checkpoint: the trial's MLflow run id and its newest
training checkpoint, so a retried or resumed trial continues in the same MLflow run.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from sweeps.spec import SweepSpec

STATE = "trial_state.json"


def run_trial(config: dict, spec: SweepSpec, parent_run_id: str, tracking_uri: str) -> None:
    """The Ray Tune trainable (a function; Ray binds the keyword arguments)."""
    import ray
    import torch
    from ray import tune

    from bench import config as cfgs
    from bench.run import RunConfig, RunHooks, run

    torch.set_num_threads(max(1, int(spec.resources.get("cpu", 1))))
    context = tune.get_context()
    previous = _trial_run(tracking_uri, parent_run_id, context.get_trial_id())
    if previous is not None and previous.info.status == "FINISHED":
        # Ray's experiment state lags behind MLflow: a trial that finished just before the
        # driver died comes back as unfinished. It is not rerun; its result is reported again.
        return _report_finished(spec, previous, tracking_uri, context.get_trial_id())
    run_cfg = cfgs.replace(RunConfig(method=spec.method, teacher=spec.teacher), spec.run, what="run")
    placement = {k: spec.resources[k] for k in ("workers", "gpus_per_worker", "cpus_per_worker")
                 if k in spec.resources}
    run_cfg = cfgs.replace(run_cfg, {"tracking_uri": tracking_uri, **placement}, what="run")
    overrides = _overrides(spec, config, run_cfg)
    reporter = Reporter(spec, context.get_trial_id())
    tags = {"mlflow.parentRunId": parent_run_id, "sweep.name": spec.name,
            "sweep.trial_id": context.get_trial_id(),
            "sweep.node_id": ray.get_runtime_context().get_node_id()}
    # an earlier attempt of this trial (retried, or the driver died): continue its MLflow run
    resume = previous.info.run_id if previous is not None else None
    # Tune stops a trial by raising SystemExit inside report(); the driver then marks the
    # run KILLED and tags why (the trial's own process may not outlive the stop)
    run(run_cfg, overrides, progress=False,
        hooks=RunHooks(run_name=trial_run_name(spec.name, context.get_trial_name(), context.get_trial_dir()),
                       tags=tags, resume=resume,
                       checkpoint=_tune_checkpoint_file(tune.get_checkpoint(), previous),
                       on_start=reporter.started, on_metrics=reporter))


def trial_run_name(sweep: str, trial_name: str, trial_dir: str) -> str:
    """``<sweep>-t03``: the trial's number in Ray's experiment tag, which its folder name holds
    after the trial's name (``run_trial_a1b2c3d4_3_lr=0.001_...``); Optuna's trial ids are random
    hex, with no number in them. The trial name where the folder says nothing."""
    import re

    folder = Path(trial_dir).name
    found = re.match(r"_(\d+)(_|$)", folder[len(trial_name):]) if folder.startswith(trial_name) else None
    return f"{sweep}-t{int(found.group(1)):02d}" if found else f"{sweep}-{trial_name}"


def _overrides(spec: SweepSpec, config: dict, run_cfg) -> dict:
    """Fixed and searched method fields, with a checkpoint per evaluation period by default:
    what a retried or resumed trial continues from."""
    from bench.run import build_method

    overrides = {**spec.set, **config}
    _, method_cfg = build_method(run_cfg, overrides)
    if "checkpoint_every" not in spec.set and getattr(method_cfg, "eval_every", 0) > 0 \
            and hasattr(method_cfg, "checkpoint_every"):
        overrides["checkpoint_every"] = method_cfg.eval_every
    return overrides


def _tune_checkpoint_file(checkpoint, previous) -> Optional[Path]:
    """The training checkpoint Tune kept, where it is newer than any in the earlier attempt's
    work folder on this node (none there when the attempt ran on another node). Otherwise the
    run's own newest checkpoint is used (it may be one evaluation period newer than Tune's)."""
    from bench.checkpoints import checkpoint_step, newest_checkpoint, run_workdir

    file = restore(checkpoint)
    if file is None or previous is None:
        return file
    local = newest_checkpoint(run_workdir(previous.info.run_id, previous.data.tags))
    return file if local is None or checkpoint_step(local) < checkpoint_step(file) else None


def _trial_run(uri: str, parent_run_id: str, trial_id: str):
    """The newest MLflow run of this trial under this sweep, or None."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_run(parent_run_id).info.experiment_id
    found = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                                             f"tags.`sweep.trial_id` = '{trial_id}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def _report_finished(spec: SweepSpec, previous, uri: str, trial_id: str) -> None:
    from mlflow.tracking import MlflowClient
    from ray import tune

    history = MlflowClient(uri).get_metric_history(previous.info.run_id, spec.metric)
    value = next(m.value for m in history if m.step == spec.nfe)
    step = int(previous.data.metrics.get("train_iterations", 0)) + 1
    tune.report({spec.metric: value, spec.objective: value, "nfe": spec.nfe, "step": step,
                 "final": 1, "run_id": previous.info.run_id, "trial_id": trial_id})


def restore(checkpoint) -> Optional[Path]:
    """The training checkpoint file in a Tune checkpoint, or None. (The trial's MLflow run is
    found by its trial id; the run id stored beside the file is for people reading it.)"""
    if checkpoint is None:
        return None
    local = Path(tempfile.mkdtemp(prefix="bench-trial-"))
    checkpoint.to_directory(str(local))
    state = json.loads((local / STATE).read_text())
    return local / state["checkpoint"] if state.get("checkpoint") else None


class Reporter:
    """``RunHooks.on_metrics``: turns what the run logs into Tune results. ``started`` is the
    run's ``on_start`` hook: it is told the MLflow run and its work folder (checkpoints)."""

    def __init__(self, spec: SweepSpec, trial_id: str):
        self.spec, self.trial_id, self.last_step = spec, trial_id, 0
        self.run_id: Optional[str] = None
        self.workdir: Optional[Path] = None

    def started(self, run_id: str, workdir: Path) -> None:
        self.run_id, self.workdir = run_id, Path(workdir)

    def __call__(self, metrics: dict, step: Optional[int]) -> None:
        from ray import tune

        if step is not None:  # distillation
            self.last_step = max(self.last_step, step)
            if self.spec.metric == "fid" and "train/fid" in metrics:
                _report_with_checkpoint({self.spec.objective: metrics["train/fid"], "step": step,
                                         "final": 0, "trial_id": self.trial_id},
                                        self.run_id, self.workdir)
        elif metrics.get("nfe") == self.spec.nfe and self.spec.metric in metrics:
            result = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            # one step past training: ASHA records the final value at the last rung it reached
            tune.report({**result, self.spec.objective: metrics[self.spec.metric],
                         "step": self.last_step + 1, "final": 1, "run_id": self.run_id,
                         "trial_id": self.trial_id})


def _report_with_checkpoint(result: dict, run_id: str, workdir: Path) -> None:
    """Report with a Tune checkpoint holding the run id and the newest training checkpoint."""
    from ray import tune

    from bench.checkpoints import newest_checkpoint

    newest = newest_checkpoint(workdir)
    with tempfile.TemporaryDirectory() as tmp:
        state = {"run_id": run_id, "checkpoint": newest.name if newest else None}
        if newest:
            shutil.copy2(newest, Path(tmp) / newest.name)
        (Path(tmp) / STATE).write_text(json.dumps(state))
        # Tune copies the folder into the trial's storage before report() returns
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))
