"""MLflow tracking: one run per ``bench run``, with an explicit local default store.

MLflow 3.17 without a tracking URI silently switches to the deprecated file store when a
leftover ``./mlruns`` exists, so we always set a URI: ``--tracking-uri``, else
MLFLOW_TRACKING_URI, else ``sqlite:///<cwd>/mlflow.db`` (artifacts under ./mlruns).
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import platform
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Iterator, Optional

from bench.errors import BenchError, root_cause

# MLflow's HTTP client retries a dead server for ~4 minutes per call by default; a run falls
# back to its local spool instead (bench.spool), so a few seconds of retries are enough
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
# MLflow 3.17's UI picks an experiment's layout from this tag (its JS enum ExperimentKind);
# without it, it may open on the GenAI overview of traces, which a training run has none of
KIND_TAG, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"
PACKAGES = ("distill-bench", "torch", "torchvision", "diffusers", "mlflow", "torch-fidelity",
            "numpy", "scikit-learn")


def resolve_uri(uri: Optional[str] = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def git_commit() -> str:
    """The commit of the checkout this package runs from ('unknown' outside a git tree)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def version_tags() -> dict[str, str]:
    tags = {"git_commit": git_commit(), "python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            tags[f"version.{pkg}"] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            tags[f"version.{pkg}"] = "not installed"
    return tags


def _quiet() -> None:
    for name in ("mlflow", "alembic"):  # store creation logs are noise in a CLI
        logging.getLogger(name).setLevel(logging.WARNING)
    # a store that fails mid-run is the spool's business (bench.spool); the system metrics
    # thread would add a warning per failed sample and an error for its last flush
    logging.getLogger("mlflow.system_metrics").setLevel(logging.CRITICAL)
    # it logs every database error with a full SQLAlchemy traceback (hundreds of lines when a
    # disk fills) before raising it; the raised error is reported, in one line, by us
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module="sqlalchemy")
    warnings.filterwarnings("ignore", module="alembic")


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise store creation across processes on one sqlite file: MLflow migrates a new
    database's schema on first use, and concurrent migrations of one file fail."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_run(experiment: str, uri: str, run_name: Optional[str] = None,
             tags: Optional[dict[str, str]] = None, run_id: Optional[str] = None, system_metrics: bool = False):
    """The one way a run is opened: start (or reopen ``run_id``) as MLflow's active run in
    ``experiment``, the store's creation serialised; store failures are one-line BenchErrors.

    ``tags`` may carry ``mlflow.parentRunId``: that is how a sweep's trials nest under the
    sweep's run when they live in other processes (``nested=True`` needs the same process).
    ``system_metrics``: MLflow samples CPU, memory (GPU with pynvml) every 10 s in a thread.
    """
    import mlflow

    _quiet()
    mlflow.set_tracking_uri(uri)
    try:
        with store_lock(uri):
            exp = mlflow.set_experiment(experiment)
            if KIND_TAG not in exp.tags:  # the UI opens on training runs, not the GenAI overview
                mlflow.MlflowClient(uri).set_experiment_tag(exp.experiment_id, KIND_TAG, MODEL_DEVELOPMENT)
            if run_id and mlflow.get_run(run_id).info.experiment_id != exp.experiment_id:
                raise BenchError(f"run {run_id} is not in experiment {experiment!r}; pass --experiment")
            return mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=tags,
                                    log_system_metrics=system_metrics)
    except BenchError:
        raise
    except Exception as exc:  # mlflow raises many types for an unreachable or bad store
        raise store_error(uri, exc) from None


def store_error(uri: str, exc: BaseException) -> BenchError:
    """One line for a failed MLflow call: a value the store refused (e.g. an experiment name)
    is not the store's address's fault; anything else names the store and its root cause."""
    code = getattr(exc, "error_code", "")
    if code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS"):
        return BenchError(f"MLflow store {uri} refused a value: {root_cause(exc)}")
    return BenchError(f"cannot use MLflow store {uri}: {root_cause(exc)}; check --tracking-uri")


@contextlib.contextmanager
def mlflow_run(experiment: str, uri: Optional[str], run_name: Optional[str] = None,
               tags: Optional[dict[str, str]] = None, run_id: Optional[str] = None) -> Iterator:
    """A plain MLflow run (``bench perf``, a sweep's parent, a report): yields the active run and
    ends it FINISHED, FAILED (an exception) or KILLED (Ctrl-C, SIGTERM)."""
    import mlflow

    active = open_run(experiment, resolve_uri(uri), run_name, tags, run_id)
    status = "FAILED"
    try:
        mlflow.set_tags(version_tags())
        yield active
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        mlflow.end_run(status)


@contextlib.contextmanager
def tracked_run(experiment: str, uri: Optional[str], run_name: Optional[str] = None,
                tags: Optional[dict[str, str]] = None, run_id: Optional[str] = None,
                system_metrics: bool = False) -> Iterator:
    """One MLflow run whose logging never loses data; yields a ``bench.spool.SpooledRun``.

    The run's work folder (checkpoints, spool) is ``checkpoints/<run id>`` under the working
    directory, recorded as the tag ``bench.workdir`` so a resumed run finds it again. The run
    ends FINISHED, FAILED (an exception) or KILLED (Ctrl-C, SIGTERM, a sweep stopping it);
    if the store failed meanwhile, the end status waits in the spool with everything else.
    """
    import mlflow

    from bench.checkpoints import run_workdir
    from bench.claims import claim

    uri = resolve_uri(uri)
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    active = open_run(experiment, uri, run_name, tags, run_id, system_metrics)
    info = mlflow.get_run(active.info.run_id)
    workdir = run_workdir(active.info.run_id, info.data.tags)
    with claim(workdir, active.info.run_id):  # a resumed run's is held already (re-entrant)
        yield from _tracked(uri, active.info.run_id, workdir, info, tags)


def _tracked(uri: str, run_id: str, workdir: Path, info, tags: Optional[dict[str, str]]) -> Iterator:
    """The body of :func:`tracked_run`, once the run is open and claimed."""
    from mlflow.tracking import MlflowClient

    from bench.checkpoints import WORKDIR_TAG
    from bench.spool import SpooledRun, pending, sync

    tracker = SpooledRun(MlflowClient(uri), run_id, uri, workdir, info.data.params)
    try:  # an earlier attempt's spool goes first, to keep the order
        if pending(tracker.spool):
            sync(tracker.spool, client=tracker.client)
    except BenchError as exc:  # the store still fails, or the spool is damaged
        tracker.offline = str(exc)
        print(f"bench: warning: {exc}; this run's params, metrics and artifacts queue behind it in "
              f"{tracker.spool}", file=sys.stderr, flush=True)
    tracker.set_tags({**version_tags(), **(tags or {}), WORKDIR_TAG: str(workdir),
                      "bench.host": socket.gethostname(), "bench.pid": str(os.getpid())})
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        _end_active(status, tracker.finish(status))


def _end_active(status: str, reachable: bool) -> None:
    """Pop MLflow's active run; where the store is known to fail, without minutes of retries."""
    import mlflow

    saved = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    if not reachable:
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        mlflow.end_run(status)  # pops the run first, then sets the status (done already)
    except Exception:
        pass  # the status is in the spool: bench sync sets it
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = saved
