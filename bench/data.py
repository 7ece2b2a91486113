"""The embedded data set: scikit-learn's 8x8 digits (ships inside the package, works offline).

Pixels 0..16 are mapped to [-1, 1]. A fixed, stratified 75/25 split keeps a held-out set
whose FID against the training digits is the floor any sampler can be compared with.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

SPLIT_SEED = 0
HELDOUT_FRACTION = 0.25


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def digits_split(part: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 8, 8) in [-1, 1], labels) of the 'train' or 'heldout' split."""
    if part not in ("train", "heldout"):
        raise ValueError("part must be 'train' or 'heldout'")
    images, labels = _digits()
    rng = np.random.default_rng(SPLIT_SEED)
    heldout = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):  # stratified: every class keeps the same share
        idx = np.flatnonzero(labels == c)
        heldout[rng.choice(idx, int(round(len(idx) * HELDOUT_FRACTION)), replace=False)] = True
    mask = heldout if part == "heldout" else ~heldout
    x = torch.from_numpy(images[mask] / 8.0 - 1.0)[:, None]
    return x, torch.from_numpy(labels[mask])
