"""Low-level file helpers shared by the core: hashing, atomic writes, 8-bit quantisation.

Everything here imports only torch, numpy, safetensors and bench.errors, so any module of
``bench`` can use it without an import circle. A full disk is one line naming the device
(:func:`no_space_guard`), and a half-written file is removed.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import uuid
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from bench.errors import BenchError


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (weights files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def temp_beside(path: Path, suffix: str = ".tmp") -> Path:
    """A temporary name next to ``path`` that no other writer uses: concurrent runs that fill
    the same cache (references, teacher weights) each rename their own complete file, where one
    shared ``.tmp`` name let the first rename pull the file from under the second."""
    return path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def save_weights(module: torch.nn.Module, path: Path) -> None:
    """A module's state dict as safetensors (contiguous CPU tensors), written atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    with no_space_guard(path, "weights", partial=[tmp]):
        save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, str(tmp))
        tmp.replace(path)


def save_npz_atomic(path: Path, **arrays) -> None:
    """np.savez to a temporary name, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path, ".tmp.npz")  # np.savez appends .npz otherwise
    with no_space_guard(path, "arrays", partial=[tmp]):
        np.savez(tmp, **arrays)
        tmp.replace(path)


def to_uint8(x: torch.Tensor, data_range=(-1.0, 1.0)) -> torch.Tensor:
    """Quantise samples in data_range to uint8 as an 8-bit image file would (3 channels)."""
    lo, hi = data_range
    u8 = ((x.float() - lo) / (hi - lo) * 255).round().clamp(0, 255).to(torch.uint8)
    return u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_TEXT = ("no space left on device", "database or disk is full", "disk quota exceeded")


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything in its chain: torch's zip writer wraps the OSError in a
    RuntimeError) says the disk is full."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return True
        if any(t in str(exc).lower() for t in NO_SPACE_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def device_of(path: Path) -> str:
    """``DEVICE (MOUNT POINT)`` of the file system holding ``path``, from /proc/mounts (the
    path itself where that cannot be read)."""
    path = Path(path).resolve()
    best = ("", "")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount = line.split()[:2]
            mount = mount.replace("\\040", " ")
            if (path == Path(mount) or Path(mount) in path.parents) and len(mount) > len(best[1]):
                best = (device, mount)
    except (OSError, ValueError, IndexError):
        pass
    return f"{best[0]} ({best[1]})" if best[0] else str(path.parent)


@contextlib.contextmanager
def no_space_guard(path: Path, what: str, partial: Sequence[Path] = (), then: str = "") -> Iterator[None]:
    """Turn a full disk while writing ``what`` to ``path`` into one BenchError that names the
    device, after deleting the ``partial`` files (a half-written file only fills the disk
    further); ``then`` says what is still intact. Other errors pass through unchanged."""
    try:
        yield
    except BenchError:
        raise  # already said (e.g. by a guard further in)
    except Exception as exc:
        if not is_no_space(exc):
            raise
        for p in partial:
            remove_quietly(Path(p))
        raise BenchError(f"no space left on {device_of(path)} while writing {what} to {path}"
                         f"{'; ' + then if then else ''}") from None


def remove_quietly(path: Path) -> None:
    """Delete a file or folder if it is there; never raises (cleanup after a failure)."""
    import shutil

    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass
