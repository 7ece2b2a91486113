"""``bench run --resume``: find the interrupted MLflow run of this configuration and its newest
checkpoint, so the same command line continues where a killed run stopped.

A run is recognised by the hash of its resolved configuration (the tag ``bench.config_hash``);
runs not FINISHED are candidates, newest first, except one whose process still lives on this
host (two ``--resume`` of one config must not train into one run) and one whose end status
waits, FINISHED, in an unsynced spool.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
from typing import Any

from bench.checkpoints import run_workdir
from bench.errors import BenchError, first_line

HASH_TAG = "bench.config_hash"
UNHASHED = ("tracking_uri",)  # not part of what a run computes: where it logs


def config_hash(run_cfg: Any, method_cfg: Any) -> str:
    fields = {**{f"run.{k}": v for k, v in dataclasses.asdict(run_cfg).items()},
              **{f"method.{k}": v for k, v in dataclasses.asdict(method_cfg).items()}}
    kept = {k: v for k, v in fields.items() if k.split(".", 1)[1] not in UNHASHED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _alive_here(run) -> bool:
    tags = run.data.tags
    if tags.get("bench.host") != socket.gethostname() or not tags.get("bench.pid", "").isdigit():
        return False
    pid = int(tags["bench.pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_run(spec: str, experiment: str, uri: str, key: str):
    """The run to continue: ``spec`` is ``auto`` (newest unfinished run of this config, or None)
    or a run id (which must exist, be unfinished and have this config)."""
    from mlflow.tracking import MlflowClient

    from bench.spool import spooled_status
    from bench.tracking import _quiet, store_lock

    _quiet()
    client = MlflowClient(uri)
    try:
        with store_lock(uri):
            if spec != "auto":
                return _check_explicit(client, spec, key, uri)
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                return None
            runs = client.search_runs([exp.experiment_id], f"tags.`{HASH_TAG}` = '{key}'",
                                      order_by=["attributes.start_time DESC"], max_results=50)
    except BenchError:
        raise
    except Exception as exc:  # mlflow raises many types for an unreachable or bad store
        raise BenchError(f"cannot use MLflow store {uri}: {first_line(exc)}; check --tracking-uri") from None
    for run in runs:
        if run.info.status == "FINISHED" or _alive_here(run):
            continue
        if spooled_status(run_workdir(run.info.run_id, run.data.tags) / "spool") == "FINISHED":
            continue
        return run
    return None


def _check_explicit(client, run_id: str, key: str, uri: str):
    try:
        run = client.get_run(run_id)
    except Exception:
        raise BenchError(f"--resume {run_id}: no such MLflow run in {uri}") from None
    if run.info.status == "FINISHED":
        raise BenchError(f"--resume {run_id}: that run already finished; nothing to resume")
    if run.data.tags.get(HASH_TAG) != key:
        raise BenchError(f"--resume {run_id}: that run was started with another configuration; "
                         f"resume it with the same command line")
    return run
