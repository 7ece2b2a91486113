"""Training checkpoints and a run's work folder: the one place that finds, orders and reads them.

A run keeps its files in a work folder, ``checkpoints/<MLflow run id>`` under the directory it
started in, recorded as the run's tag ``bench.workdir`` so a resume (on this node or another
that shares the folder) finds it again. Checkpoints are ``checkpoint_<global step>.pt``;
they are ordered by the step in the name, never by the name itself (which would sort
``checkpoint_10000000.pt`` before ``checkpoint_9999999.pt``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import torch

from bench.errors import BenchError, first_line
from bench.files import no_space_guard, temp_beside

WORKDIR_TAG = "bench.workdir"
PATTERN = "checkpoint_*.pt"


def run_workdir(run_id: str, tags: Mapping[str, str] = ()) -> Path:
    """The work folder of MLflow run ``run_id``: its ``bench.workdir`` tag, else the default."""
    tagged = dict(tags).get(WORKDIR_TAG)
    return Path(tagged) if tagged else (Path("checkpoints") / run_id).resolve()


def checkpoint_path(workdir: Path, step: int) -> Path:
    return Path(workdir) / f"checkpoint_{step:07d}.pt"


def checkpoint_step(path: Path) -> int:
    """The global step in a checkpoint's name (``checkpoint_0000250.pt`` -> 250)."""
    return int(Path(path).stem.rsplit("_", 1)[1])


def list_checkpoints(workdir: Path) -> list[Path]:
    """Checkpoints in ``workdir``, oldest first by step ([] if the folder does not exist)."""
    if not Path(workdir).is_dir():
        return []
    found = [p for p in Path(workdir).glob(PATTERN) if p.stem.rsplit("_", 1)[1].isdigit()]
    return sorted(found, key=checkpoint_step)


def newest_checkpoint(workdir: Path) -> Optional[Path]:
    found = list_checkpoints(workdir)
    return found[-1] if found else None


def write_checkpoint(state: dict, path: Path) -> Path:
    """torch.save to a temporary name, then rename: a kill never leaves a truncated checkpoint,
    and a full disk is one line (bench.files.no_space_guard) that leaves no partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    previous = newest_checkpoint(path.parent)
    intact = (f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint was saved") \
        + "; free space, then continue with bench run --resume"
    with no_space_guard(path, f"checkpoint {checkpoint_step(path)}", partial=[tmp], then=intact):
        # a file object, not a name: torch's zip writer then fails with the OSError (ENOSPC)
        # as its cause rather than only "unexpected pos"
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
        tmp.replace(path)
    return path


def prune(workdir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for old in list_checkpoints(workdir)[:-keep]:
        old.unlink(missing_ok=True)


def read_checkpoint(path: Path, device="cpu", mmap: bool = False) -> dict:
    """A checkpoint's state, loaded as weights only; unreadable files are one-line BenchErrors.
    ``mmap=True`` maps the tensors instead of reading them: a cheap check before a run opens."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"checkpoint {path} does not exist; pass an existing checkpoint file")
    try:
        state = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises several types for truncated, corrupt or pickled files
        raise BenchError(f"checkpoint {path} cannot be loaded as weights: it is truncated, corrupt or "
                         f"pickled ({first_line(exc, 160)}); delete it to resume from an older one") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise BenchError(f"checkpoint {path} is not a distill-bench training checkpoint")
    return state
