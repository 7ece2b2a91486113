"""``digits``: the embedded default teacher, a small diffusers UNet on scikit-learn's digits.

Recipe (reproduced by ``bench teacher train digits``): 8x8x1 images in [-1, 1], the cosine
schedule of Nichol & Dhariwal (T = 1000, near-zero terminal SNR, so one-step samplers start
from almost pure noise), v-prediction (Salimans & Ho 2022), whose x0 stays well defined where
alpha_t ~ 0, AdamW with warm-up and cosine decay, and an EMA of the weights, which is what
ships. The weights live in ``bench/assets/digits`` as a diffusers pipeline folder and load
through the same code as the hub teachers.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Callable, Optional

import torch

from bench.config import option, to_json
from bench.data import digits_split

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "digits"


@dataclasses.dataclass(frozen=True)
class DigitsRecipe:
    iterations: int = option(4000, "optimiser steps")
    batch_size: int = option(128, "images per step")
    lr: float = option(1e-3, "peak learning rate (AdamW)")
    warmup: int = option(100, "linear warm-up steps")
    ema_decay: float = option(0.999, "EMA decay of the shipped weights")
    seed: int = option(0, "seed for init, batches, t and noise")
    block_out_channels: tuple[int, ...] = option((32, 64), "UNet widths per resolution")


def make_unet(recipe: DigitsRecipe):
    from diffusers import UNet2DModel

    downs = ("DownBlock2D",) + ("AttnDownBlock2D",) * (len(recipe.block_out_channels) - 1)
    ups = tuple(t.replace("Down", "Up") for t in reversed(downs))
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=recipe.block_out_channels, down_block_types=downs,
                       up_block_types=ups, norm_num_groups=8, attention_head_dim=32)


def make_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         prediction_type="v_prediction", clip_sample=True)


def train_digits_teacher(recipe: DigitsRecipe, out_dir: Path,
                         progress: Optional[Callable[[int, float], None]] = None) -> Path:
    """Train the digits UNet with the v-prediction loss and save the EMA weights to out_dir."""
    from diffusers import DDPMPipeline

    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    x_train, _ = digits_split("train")
    unet, scheduler = make_unet(recipe), make_scheduler()
    ema = copy.deepcopy(unet).requires_grad_(False)
    alpha_bar = scheduler.alphas_cumprod.float()
    opt = torch.optim.AdamW(unet.parameters(), lr=recipe.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / recipe.warmup)
                                              * 0.5 * (1 + math.cos(math.pi * i / recipe.iterations)))
    for it in range(recipe.iterations):
        x0 = x_train[torch.randint(0, len(x_train), (recipe.batch_size,), generator=gen)]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (recipe.batch_size,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a, s = alpha_bar[t].sqrt().view(-1, 1, 1, 1), (1 - alpha_bar[t]).sqrt().view(-1, 1, 1, 1)
        v = a * eps - s * x0  # the v target (Salimans & Ho 2022, eq. in sec. 4)
        loss = (unet(a * x0 + s * eps, t).sample - v).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - recipe.ema_decay)
        if progress:
            progress(it, loss.item())
    out_dir = Path(out_dir)
    DDPMPipeline(unet=ema, scheduler=scheduler).save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "recipe.json").write_text(to_json(recipe))
    return out_dir
