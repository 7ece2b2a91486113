"""Files a run leaves behind: sample grids (PNG), raw samples (NPZ), training curves (PNG)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def save_grid(samples: torch.Tensor, path: Path, data_range=(-1.0, 1.0), title: str = "",
              max_items: int = 64) -> None:
    """Images as an 8-bit grid; low-dimensional samples as a scatter plot of the first two axes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if samples.dim() == 4:
        from PIL import Image
        from torchvision.utils import make_grid

        from bench.files import to_uint8

        x = to_uint8(samples[:max_items], data_range)
        grid = make_grid(x, nrow=int(math.ceil(math.sqrt(len(x)))), padding=1, pad_value=128)
        img = Image.fromarray(grid.permute(1, 2, 0).numpy())
        scale = max(1, 256 // img.width)  # 8x8 digits are unreadable at native size
        img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = samples.flatten(1)[:, :2].numpy()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
    ax.set_aspect("equal")
    ax.set_title(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_samples(samples: torch.Tensor, path: Path) -> None:
    """Raw float samples as ``np.savez_compressed(path, x=...)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, x=samples.numpy())


def plot_training(history: list[dict], path: Path, title: str = "") -> None:
    """Loss and quick FID against distillation wall-clock (the curve sweeps stop early on)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = [(h["train/seconds"], h["train/loss"]) for h in history if "train/loss" in h]
    fid = [(h["train/seconds"], h["train/fid"]) for h in history if "train/fid" in h]
    fig, axes = plt.subplots(1, 2 if fid else 1, figsize=(9 if fid else 4.5, 3.5), squeeze=False)
    if loss:
        axes[0, 0].semilogy(*zip(*loss), lw=0.8)
    axes[0, 0].set(xlabel="train seconds", ylabel="train/loss", title=title)
    if fid:
        axes[0, 1].plot(*zip(*fid), marker="o")
        axes[0, 1].set(xlabel="train seconds", ylabel="train/fid (quick, small n)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
