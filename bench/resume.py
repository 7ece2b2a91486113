"""``bench run --resume``: find the interrupted MLflow run of this configuration and its newest
checkpoint, so the same command line continues where a killed run stopped.

A run is recognised by the hash of its resolved configuration (the tag ``bench.config_hash``);
runs not FINISHED are candidates, newest first, except one whose end status waits, FINISHED,
in an unsynced spool. A candidate is claimed (bench.claims) before anything else happens, and
its status read again once claimed, so two ``--resume`` of one run never both train into it:
the second is refused in one line naming the process that holds the run.

``--resume RUN_ID`` of a run whose training settings match (``bench.train_hash``) but whose
evaluation settings differ (``eval_only`` fields of RunConfig, e.g. ``--num-samples``)
re-evaluates it: MLflow params cannot change, so a new run (tag ``bench.reevaluates``) takes
the student from the newest checkpoint of the source run and evaluates it with the new settings.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Optional

from bench.checkpoints import newest_checkpoint, run_workdir
from bench.claims import claim
from bench.errors import BenchError
from bench.run_config import RunConfig

HASH_TAG = "bench.config_hash"
TRAIN_HASH_TAG = "bench.train_hash"
REEVALUATES_TAG = "bench.reevaluates"
# not what a run computes: where and what it logs, where it trains (workers split the batch's
# random streams, bench/streams.py; a resume on another layout is refused by the trainer)
UNHASHED = ("tracking_uri", "system_metrics", "register", "workers", "gpus_per_worker", "address",
            "worker_retries", "cpus_per_worker")
EVAL_ONLY = tuple(f.name for f in dataclasses.fields(RunConfig) if f.metadata.get("eval_only"))


def config_hash(run_cfg: Any, method_cfg: Any, evaluation: bool = True) -> str:
    """Hash of everything a run computes; without ``evaluation``, of what its training computes."""
    skip = UNHASHED + (() if evaluation else EVAL_ONLY)
    fields = {**{f"run.{k}": v for k, v in dataclasses.asdict(run_cfg).items()},
              **{f"method.{k}": v for k, v in dataclasses.asdict(method_cfg).items()}}
    kept = {k: v for k, v in fields.items() if not (k.startswith("run.") and k[4:] in skip)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:20]


def hash_tags(run_cfg: Any, method_cfg: Any) -> dict[str, str]:
    return {HASH_TAG: config_hash(run_cfg, method_cfg), TRAIN_HASH_TAG: config_hash(run_cfg, method_cfg, False)}


@dataclasses.dataclass
class ResumePoint:
    run_id: Optional[str]  # the run to reopen; None: a new run
    checkpoint: Optional[Path]  # where training continues from
    tags: dict[str, str]  # for the new run of a re-evaluation


def resume_point(spec: str, run_cfg: RunConfig, tags: dict[str, str], held: contextlib.ExitStack,
                 checkpoint: Optional[Path] = None) -> ResumePoint:
    """Where ``--resume SPEC`` continues; the run (or the re-evaluated source) is claimed in
    ``held`` for as long as the caller keeps it open."""
    from bench.tracking import resolve_uri

    uri = resolve_uri(run_cfg.tracking_uri)
    client = _client(uri)
    if spec == "auto":
        run = _claim_newest(client, run_cfg.experiment, uri, tags[HASH_TAG], held)
        if run is None:
            print(f"bench: no interrupted run of this configuration in experiment {run_cfg.experiment!r}; "
                  f"starting a new one", file=sys.stderr)
            return ResumePoint(None, checkpoint, {})
    else:
        run = _claim_explicit(client, spec, tags, uri, held)
    rid, workdir = run.info.run_id, run_workdir(run.info.run_id, run.data.tags)
    ckpt = checkpoint or newest_checkpoint(workdir)
    where = f"checkpoint {ckpt}" if ckpt else "the start (it saved no checkpoint)"
    if run.data.tags.get(HASH_TAG) != tags[HASH_TAG]:
        print(f"bench: run {rid} was evaluated with other settings and a run's params cannot change: "
              f"a new MLflow run evaluates its student, from {where}", file=sys.stderr)
        return ResumePoint(None, ckpt, {REEVALUATES_TAG: rid})
    print(f"bench: resuming MLflow run {rid} from {where}", file=sys.stderr)
    return ResumePoint(rid, ckpt, {})


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    from bench.tracking import _quiet

    _quiet()
    return MlflowClient(uri)


def _store(uri: str, call, *args, **kwargs):
    """An MLflow call whose failure is the one-line store error."""
    try:
        return call(*args, **kwargs)
    except BenchError:
        raise
    except Exception as exc:  # mlflow raises many types for an unreachable or bad store
        from bench.tracking import store_error

        raise store_error(uri, exc) from None


def _claim_newest(client, experiment: str, uri: str, key: str, held: contextlib.ExitStack):
    """The newest unfinished run of this configuration, claimed; None if there is none; a
    BenchError if there are some but every one is in use."""
    from bench.tracking import store_lock

    with store_lock(uri):
        exp = _store(uri, client.get_experiment_by_name, experiment)
        if exp is None:
            return None
        runs = _store(uri, client.search_runs, [exp.experiment_id], f"tags.`{HASH_TAG}` = '{key}'",
                      order_by=["attributes.start_time DESC"], max_results=50)
    busy = None
    for run in runs:
        if run.info.status == "FINISHED" or _spooled_finished(run):
            continue
        try:
            return _hold(client, run, uri, held)
        except BenchError as exc:
            busy = busy or exc
    if busy is not None:
        raise BenchError(f"{busy}; or drop --resume to start another run of this configuration")
    return None


def _claim_explicit(client, run_id: str, tags: dict[str, str], uri: str, held: contextlib.ExitStack):
    try:
        run = client.get_run(run_id)
    except Exception:
        raise BenchError(f"--resume {run_id}: no such MLflow run in {uri}") from None
    same = run.data.tags.get(HASH_TAG) == tags[HASH_TAG]
    if not same and TRAIN_HASH_TAG not in run.data.tags:
        raise BenchError(f"--resume {run_id}: that run was made by an older distill-bench (no "
                         f"{TRAIN_HASH_TAG} tag), so its student cannot be re-evaluated here; start a new run")
    if not same and run.data.tags.get(TRAIN_HASH_TAG) != tags[TRAIN_HASH_TAG]:
        raise BenchError(f"--resume {run_id}: that run was started with another configuration; "
                         f"resume it with the same command line (only evaluation settings may change)")
    run = _hold(client, run, uri, held)
    if same and (run.info.status == "FINISHED" or _spooled_finished(run)):
        raise BenchError(f"--resume {run_id}: that run already finished; nothing to resume (change "
                         f"evaluation settings such as --num-samples to evaluate its student again)")
    return run


def _hold(client, run, uri: str, held: contextlib.ExitStack):
    """Claim ``run`` in ``held`` and read it again: it may have ended while we waited."""
    rid = run.info.run_id
    held.enter_context(claim(run_workdir(rid, run.data.tags), rid))
    return _store(uri, client.get_run, rid)


def _spooled_finished(run) -> bool:
    from bench.spool import spooled_status

    return spooled_status(run_workdir(run.info.run_id, run.data.tags) / "spool") == "FINISHED"

