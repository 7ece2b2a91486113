"""Tracking that loses nothing: MLflow calls that fail go to a local spool, replayed later.

A distillation run can outlive its tracking server. ``SpooledRun`` logs through ``MlflowClient``;
when a call fails (after MLflow's own HTTP retries) it stops talking to the store for the rest
of the run, so a dead server costs one timeout rather than one per logged metric, and appends
every event, in order, to ``<spool>/events.jsonl``, with artifacts copied beside it.
``sync(spool)`` (``bench sync``, and the end of the run itself) replays the events into the
same MLflow run; ``progress`` counts the events already replayed, so a sync that is
interrupted and repeated never logs a metric twice.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from bench.errors import BenchError, first_line

EVENTS, META, PROGRESS = "events.jsonl", "meta.json", "progress"
BATCH = 1000  # MLflow's log_batch accepts at most 1000 metrics (100 params or tags) per call


def replay(client, run_id: str, event: Mapping[str, Any], base: Path) -> None:
    """Send one event to MLflow (the live path and sync share this, so both log the same)."""
    from mlflow.entities import Metric, Param, RunTag

    kind, data = event["kind"], event.get("data")
    if kind == "params":
        items = [Param(k, v) for k, v in data.items()]
        for i in range(0, len(items), 100):
            client.log_batch(run_id, params=items[i:i + 100])
    elif kind == "tags":
        items = [RunTag(k, v) for k, v in data.items()]
        for i in range(0, len(items), 100):
            client.log_batch(run_id, tags=items[i:i + 100])
    elif kind == "metrics":
        items = [Metric(k, v, event["timestamp"], event.get("step") or 0) for k, v in data.items()]
        for i in range(0, len(items), BATCH):
            client.log_batch(run_id, metrics=items[i:i + BATCH])
    elif kind == "artifacts":
        client.log_artifacts(run_id, str(base / event["dir"]))
    elif kind == "status":
        client.set_terminated(run_id, data, end_time=event["timestamp"])
    else:
        raise BenchError(f"unknown spool event {kind!r} in {base}")


class SpooledRun:
    """One MLflow run's logging, with a local spool (``<workdir>/spool``) as the fallback for a
    failing store. ``workdir`` is the run's folder (checkpoints, spool)."""

    def __init__(self, client, run_id: str, uri: str, workdir: Path,
                 known_params: Optional[Mapping[str, str]] = None):
        self.client, self.run_id, self.uri = client, run_id, uri
        self.workdir, self.spool = Path(workdir), Path(workdir) / "spool"
        self.known_params = dict(known_params or {})  # a reopened run's params are immutable
        self.offline: Optional[str] = None  # why the store was given up, once it was
        self.synced = True  # False after finish() if events still wait in the spool

    def log_params(self, params: Mapping[str, Any]) -> None:
        fresh = {k: str(v) for k, v in params.items() if k not in self.known_params}
        self.known_params.update(fresh)
        if fresh:
            self._emit({"kind": "params", "data": fresh})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._emit({"kind": "tags", "data": {k: str(v) for k, v in tags.items()}})

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        self._emit({"kind": "metrics", "data": {k: float(v) for k, v in metrics.items()},
                    "step": step, "timestamp": int(time.time() * 1000)})

    def log_artifacts(self, local_dir: Path) -> None:
        if self.offline is None:
            if self._try({"kind": "artifacts", "dir": str(Path(local_dir).resolve())}):
                return
        root = self.spool / "artifacts"
        rel = f"artifacts/{len(list(root.glob('*'))) if root.is_dir() else 0:04d}"
        shutil.copytree(local_dir, self.spool / rel)  # the temporary folder vanishes after the run
        self._append({"kind": "artifacts", "dir": rel})

    def finish(self, status: str) -> bool:
        """Mark the run ended; if anything was spooled, try once to sync it. True (also kept in
        ``synced``): everything is in MLflow."""
        self._emit({"kind": "status", "data": status, "timestamp": int(time.time() * 1000)})
        if self.offline is not None:
            try:
                sync(self.spool, client=self.client)
                self.offline = None
            except BenchError:
                self.synced = False
        return self.synced

    # -- internals ---------------------------------------------------------------------
    def _emit(self, event: dict) -> None:
        if self.offline is None and self._try(event):
            return
        self._append(event)

    def _try(self, event: dict) -> bool:
        for attempt in range(3):
            try:
                replay(self.client, self.run_id, event, self.spool)
                return True
            except Exception as exc:  # any store failure: HTTP, sqlite, permissions
                # sqlite under concurrent writers reports "locked" briefly: worth a retry;
                # anything else has already had MLflow's own retries
                if "locked" in str(exc) and attempt < 2:
                    time.sleep(0.5 * 2 ** attempt)
                    continue
                self._go_offline(exc)
                return False
        return False

    def _go_offline(self, exc: BaseException) -> None:
        self.offline = first_line(exc)
        self.spool.mkdir(parents=True, exist_ok=True)
        (self.spool / META).write_text(json.dumps({"uri": self.uri, "run_id": self.run_id,
                                                   "reason": self.offline}, indent=2))
        print(f"bench: warning: MLflow store {self.uri} failed ({self.offline}); this run's "
              f"params, metrics and artifacts now go to {self.spool} (`bench sync {self.spool}` "
              f"replays them)", file=sys.stderr, flush=True)

    def _append(self, event: dict) -> None:
        with open(self.spool / EVENTS, "a") as fh:  # one line per event: a kill loses at most one
            fh.write(json.dumps(event) + "\n")


def pending(spool: Path) -> int:
    """Events in ``spool`` not yet replayed into MLflow (0 for no spool)."""
    events = Path(spool) / EVENTS
    if not events.is_file():
        return 0
    total = sum(1 for line in events.read_text().splitlines() if line.strip())
    done = int((Path(spool) / PROGRESS).read_text() or 0) if (Path(spool) / PROGRESS).is_file() else 0
    return total - done


def spooled_status(spool: Path) -> Optional[str]:
    """The end status a spool holds for its run (FINISHED, FAILED, ...), or None."""
    events = Path(spool) / EVENTS
    if not events.is_file():
        return None
    ends = [json.loads(x)["data"] for x in events.read_text().splitlines() if '"status"' in x]
    return ends[-1] if ends else None


def sync(spool: Path, uri: Optional[str] = None, client=None) -> int:
    """Replay a spool into its MLflow run (``uri`` overrides the store it recorded); returns the
    number of events sent. Raises a one-line BenchError if the store still fails."""
    spool = Path(spool)
    if not (spool / META).is_file():
        raise BenchError(f"{spool} is not a bench spool (no {META}); pass checkpoints/<run id>/spool")
    meta = json.loads((spool / META).read_text())
    if client is None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri or meta["uri"])
    lines = [x for x in (spool / EVENTS).read_text().splitlines() if x.strip()] \
        if (spool / EVENTS).is_file() else []
    done = int((spool / PROGRESS).read_text() or 0) if (spool / PROGRESS).is_file() else 0
    for i in range(done, len(lines)):
        try:
            replay(client, meta["run_id"], json.loads(lines[i]), spool)
        except Exception as exc:
            raise BenchError(f"cannot sync {spool} to {uri or meta['uri']} ({first_line(exc)}); "
                             f"{len(lines) - i} events wait there, retry `bench sync {spool}` later") from None
        (spool / PROGRESS).write_text(str(i + 1))
    return len(lines) - done
