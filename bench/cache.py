"""The on-disk cache of computed inputs: reference statistics and synthetic data sets.

An entry's file name is a hash of its *definition*: everything that defines its content (the
teacher's fingerprint, its weights and schedule included; the extractor's weights; n, steps,
seed; the version of the sampler and extractor code). A changed input gets a new entry, never
a stale one. The definition is stored inside the entry, so ``bench cache ls`` can say what
each file holds. The cache lives in $BENCH_CACHE, else ~/.cache/distill-bench.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

KINDS = ("references", "synthetic")


def cache_root() -> Path:
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "distill-bench"))


def definition_key(definition: dict) -> str:
    return hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cache_file(kind: str, definition: dict, prefix: str = "") -> Path:
    """Where the entry of ``kind`` defined by ``definition`` lives (it may not exist yet)."""
    return cache_root() / kind / f"{prefix + '-' if prefix else ''}{definition_key(definition)}.npz"


def definition_array(definition: dict) -> np.ndarray:
    """The definition as a 0-d string array, stored in the entry beside its data."""
    return np.array(json.dumps(definition, sort_keys=True, default=str))


def entries(kind: Optional[str] = None) -> Iterator[tuple[str, Path]]:
    for k in ([kind] if kind else KINDS):
        folder = cache_root() / k
        if folder.is_dir():
            for path in sorted(folder.glob("*.npz")):
                yield k, path


def describe(path: Path) -> str:
    """One line on what an entry holds, from the definition stored in it."""
    try:
        with np.load(path) as d:
            definition = json.loads(str(d["definition"])) if "definition" in d else {}
    except (OSError, ValueError, KeyError):
        return "unreadable"
    if not definition:
        return "written by an older version (no definition stored)"
    teacher = definition.get("teacher")
    source = teacher.get("source", "?") if isinstance(teacher, dict) else definition.get("source", "-")
    keep = {k: v for k, v in definition.items() if k in ("kind", "extractor", "n", "steps", "seed", "folder")}
    return f"teacher {source}; " + ", ".join(f"{k}={v}" for k, v in keep.items())


def listing(kind: Optional[str] = None) -> list[str]:
    rows = []
    for k, path in entries(kind):
        stat = path.stat()
        when = datetime.datetime.fromtimestamp(stat.st_mtime).isoformat(timespec="seconds")
        rows.append(f"{k:<10} {stat.st_size / 2**20:8.2f} MB  {when}  {path.name}  {describe(path)}")
    return rows


def clear(kind: Optional[str] = None) -> int:
    """Delete every entry (of ``kind``); returns how many files were removed."""
    removed = 0
    for _, path in list(entries(kind)):
        path.unlink(missing_ok=True)
        removed += 1
    return removed
