"""Tracking that loses nothing: MLflow calls that fail go to a local spool, replayed later.

A distillation run can outlive its tracking server. ``SpooledRun`` logs through ``MlflowClient``;
when a call fails (after MLflow's own HTTP retries) it stops talking to the store for the rest
of the run, so a dead server costs one timeout rather than one per logged metric, and appends
every event, in order, to ``<spool>/events.jsonl``, with artifacts copied beside it.
``sync(spool)`` (``bench sync``, and the end of the run itself) replays the events into the
same MLflow run; ``progress`` counts the events already replayed, so a sync that is
interrupted and repeated never logs a metric twice.

A kill during a write leaves a torn last line: it is skipped (and cut off before the next
append). Anything else that does not parse (a corrupt line, ``meta.json`` or ``progress``) is
one line naming the file; every event is checked before any is sent.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from bench.errors import BenchError, first_line, root_cause
from bench.files import device_of, is_no_space, no_space_guard

EVENTS, META, PROGRESS = "events.jsonl", "meta.json", "progress"
# what each kind of event must hold (replay reads exactly these)
SHAPES = {"params": {"data": dict}, "tags": {"data": dict}, "artifacts": {"dir": str},
          "metrics": {"data": dict, "timestamp": int}, "status": {"data": str, "timestamp": int}}
BATCH = 1000  # MLflow's log_batch accepts at most 1000 metrics (100 params or tags) per call


def replay(client, run_id: str, event: Mapping[str, Any], base: Path) -> None:
    """Send one event to MLflow (the live path and sync share this, so both log the same)."""
    from mlflow.entities import Metric, Param, RunTag

    kind, data = event["kind"], event.get("data")
    if kind in ("params", "tags"):
        items = [(Param if kind == "params" else RunTag)(k, v) for k, v in data.items()]
        for i in range(0, len(items), 100):
            client.log_batch(run_id, **{kind: items[i:i + 100]})
    elif kind == "metrics":
        items = [Metric(k, v, event["timestamp"], event.get("step") or 0) for k, v in data.items()]
        for i in range(0, len(items), BATCH):
            client.log_batch(run_id, metrics=items[i:i + BATCH])
    elif kind == "artifacts":
        client.log_artifacts(run_id, str(base / event["dir"]))
    elif kind == "status":
        client.set_terminated(run_id, data, end_time=event["timestamp"])


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
        with no_space_guard(self.spool / rel, "the run's artifacts (spooled: the store failed)",
                            partial=[self.spool / rel]):
            shutil.copytree(local_dir, self.spool / rel)  # the temporary folder vanishes after the run
        self._append({"kind": "artifacts", "dir": rel})

    def finish(self, status: str) -> bool:
        """Mark the run ended; if anything was spooled, try once to sync it. True (also kept in
        ``synced``): everything is in MLflow. Never raises: it runs while a failure propagates."""
        try:
            self._emit({"kind": "status", "data": status, "timestamp": int(time.time() * 1000)})
        except BenchError as exc:  # neither the store nor the spool took it (a full disk)
            print(f"bench: warning: the run's end status {status} was not recorded: {exc}",
                  file=sys.stderr, flush=True)
            self.synced = False
            return False
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
        self.offline = root_cause(exc)  # "database or disk is full", not the wrapper's notice
        self.spool.mkdir(parents=True, exist_ok=True)
        with no_space_guard(self.spool / META, "the MLflow spool (the store failed)", partial=[self.spool / META]):
            (self.spool / META).write_text(json.dumps({"uri": self.uri, "run_id": self.run_id,
                                                       "reason": self.offline}, indent=2))
        print(f"bench: warning: MLflow store {self.uri} failed ({self.offline}); this run's "
              f"params, metrics and artifacts now go to {self.spool} (`bench sync {self.spool}` "
              f"replays them)", file=sys.stderr, flush=True)

    def _append(self, event: dict) -> None:
        path = self.spool / EVENTS
        size = _cut_torn_tail(path)
        try:
            with open(path, "a") as fh:  # one line per event: a kill loses at most one
                fh.write(json.dumps(event) + "\n")
        except OSError as exc:
            if not is_no_space(exc):
                raise
            _truncate(path, size)  # no half line: the events before it stay readable
            raise BenchError(f"no space left on {device_of(path)} while spooling the run's MLflow data "
                             f"to {path} (the store failed: {self.offline}); the events before it are "
                             f"kept there") from None


def _cut_torn_tail(path: Path) -> int:
    """Cut a torn last line (a kill during an append) so the next event starts a line of its
    own; returns the file's size after. Reads one byte unless there is a tail to cut."""
    if not path.is_file():
        return 0
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        if size == 0 or (fh.seek(size - 1), fh.read(1))[1] == b"\n":
            return size
        fh.seek(0)
        keep = fh.read().rfind(b"\n") + 1
    _truncate(path, keep)
    return keep


def _truncate(path: Path, size: int) -> None:
    try:
        with open(path, "r+b") as fh:
            fh.truncate(size)
    except OSError:
        pass


def read_events(spool: Path) -> tuple[list[dict], bool]:
    """The spool's events and whether a torn last line (what a kill during a write leaves) was
    left out; any other line that is not a well-formed event is a BenchError naming it."""
    path = Path(spool) / EVENTS
    if not path.is_file():
        return [], False
    data = path.read_bytes()
    lines = data.split(b"\n")
    events = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            events.append(_event(raw))
        except ValueError as exc:
            if number == len(lines) and not data.endswith(b"\n"):
                return events, True
            raise BenchError(f"{path} line {number} is corrupt ({first_line(exc, 120)}); fix or delete "
                             f"that line, then run `bench sync {spool}` again") from None
    return events, False


def _event(raw: bytes) -> dict:
    event = json.loads(raw.decode("utf-8"))  # UnicodeDecodeError and JSONDecodeError are ValueErrors
    if not isinstance(event, dict) or event.get("kind") not in SHAPES:
        raise ValueError(f"not an event of a known kind ({', '.join(SHAPES)})")
    for key, kind in SHAPES[event["kind"]].items():
        if not isinstance(event.get(key), kind):
            raise ValueError(f"a {event['kind']} event needs {key!r} as {kind.__name__}")
    return event


def _meta(spool: Path) -> dict:
    path = Path(spool) / META
    if not path.is_file():
        raise BenchError(f"{spool} is not a bench spool (no {META}); pass checkpoints/<run id>/spool")
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict) or not all(isinstance(meta.get(k), str) for k in ("uri", "run_id")):
            raise ValueError('it needs "uri" and "run_id" strings')
    except (OSError, ValueError) as exc:
        raise BenchError(f"{path} is corrupt ({first_line(exc, 120)}); rewrite it as "
                         f'{{"uri": "<MLflow store>", "run_id": "<the folder name above spool/>"}}') from None
    return meta


def _progress(spool: Path, total: int) -> int:
    """Events already replayed, from the ``progress`` file (none if it is missing or empty)."""
    path = Path(spool) / PROGRESS
    try:
        text = path.read_text().strip() if path.is_file() else ""
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read {path} ({first_line(exc, 120)})") from None
    if text and (not text.isdigit() or int(text) > total):
        raise BenchError(f"{path} holds {text[:40]!r}, not a count of synced events (0..{total}); write "
                         f"the number already in MLflow, or delete it to replay every event")
    return int(text or 0)


def pending(spool: Path) -> int:
    """Events in ``spool`` not yet replayed into MLflow (0 for no spool)."""
    events, _ = read_events(spool)
    return len(events) - _progress(spool, len(events)) if events else 0


def spooled_status(spool: Path) -> Optional[str]:
    """The end status a spool holds for its run (FINISHED, FAILED, ...), or None (also for a
    spool that cannot be read: nothing is known of it)."""
    try:
        events, _ = read_events(spool)
    except BenchError:
        return None
    ends = [e["data"] for e in events if e["kind"] == "status"]
    return ends[-1] if ends else None


def sync(spool: Path, uri: Optional[str] = None, client=None) -> int:
    """Replay a spool into its MLflow run (``uri`` overrides the store it recorded); returns the
    number of events sent. Raises a one-line BenchError if the spool is corrupt, its run is in
    use by another process (whose own end syncs it) or the store still fails; a torn last line
    is skipped with a warning."""
    from bench.claims import claim

    spool = Path(spool)
    meta = _meta(spool)
    with claim(spool.parent, meta["run_id"]):  # re-entrant: a run syncing its own spool holds it
        events, torn = read_events(spool)
        done = _progress(spool, len(events))
        if torn:
            print(f"bench: warning: {spool / EVENTS}: skipped its incomplete last line (a write cut "
                  f"short by a kill)", file=sys.stderr, flush=True)
        if client is None:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(uri or meta["uri"])
        for i in range(done, len(events)):
            _replay_one(client, meta, events, i, spool, uri)
    return len(events) - done


def _replay_one(client, meta: dict, events: list[dict], i: int, spool: Path, uri: Optional[str]) -> None:
    try:
        replay(client, meta["run_id"], events[i], spool)
    except Exception as exc:
        raise BenchError(f"cannot sync {spool} to {uri or meta['uri']} ({root_cause(exc)}); "
                         f"{len(events) - i} events wait there, retry `bench sync {spool}` later") from None
    tmp = spool / (PROGRESS + ".tmp")
    with no_space_guard(spool / PROGRESS, "the spool's progress", partial=[tmp]):
        tmp.write_text(str(i + 1))
        tmp.replace(spool / PROGRESS)  # never an empty or half-written count


def sync_all(spools: list[Path], uri: Optional[str] = None) -> list[tuple[Path, Optional[int], str]]:
    """Sync each spool on its own: one that fails never stops the others. Returns
    (spool, events sent or None, error message or '') per spool."""
    results = []
    for spool in spools:
        try:
            results.append((spool, sync(spool, uri), ""))
        except BenchError as exc:
            results.append((spool, None, str(exc)))
    return results
