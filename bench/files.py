"""Low-level file helpers shared by the core: hashing, atomic writes, 8-bit quantisation.

Everything here imports only torch, numpy and safetensors, so any module of ``bench`` can use
it without an import circle.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (weights files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_weights(module: torch.nn.Module, path: Path) -> None:
    """A module's state dict as safetensors (contiguous CPU tensors), written atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, str(tmp))
    tmp.replace(path)


def save_npz_atomic(path: Path, **arrays) -> None:
    """np.savez to a temporary name, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def to_uint8(x: torch.Tensor, data_range=(-1.0, 1.0)) -> torch.Tensor:
    """Quantise samples in data_range to uint8 as an 8-bit image file would (3 channels)."""
    lo, hi = data_range
    u8 = ((x.float() - lo) / (hi - lo) * 255).round().clamp(0, 255).to(torch.uint8)
    return u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8
