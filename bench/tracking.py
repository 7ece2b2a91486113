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
import subprocess
import warnings
from pathlib import Path
from typing import Iterator, Optional

from bench.errors import BenchError

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


@contextlib.contextmanager
def mlflow_run(experiment: str, uri: Optional[str], run_name: Optional[str] = None,
               tags: Optional[dict[str, str]] = None, run_id: Optional[str] = None) -> Iterator:
    """Start an MLflow run in ``experiment`` on ``uri`` (or reopen ``run_id``); yields the active run.

    ``tags`` may carry ``mlflow.parentRunId``: that is how a sweep's trials nest under the
    sweep's run when they live in other processes (``nested=True`` needs the same process).
    """
    import mlflow

    for name in ("mlflow", "alembic"):  # store creation logs are noise in a CLI
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="sqlalchemy")
    mlflow.set_tracking_uri(resolve_uri(uri))
    try:
        mlflow.set_experiment(experiment)
    except Exception as exc:  # mlflow raises many types for an unreachable or bad store
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchError(f"cannot use MLflow store {resolve_uri(uri)}: {first}; "
                         f"check --tracking-uri") from None
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=tags) as run:
        mlflow.set_tags(version_tags())
        yield run
