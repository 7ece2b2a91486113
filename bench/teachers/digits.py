"""``digits`` and ``digits_eps``: the embedded teachers, small diffusers UNets on scikit-learn's digits.

Recipe (reproduced by ``bench teacher train digits``): 8x8x1 images in [-1, 1], the cosine
schedule of Nichol & Dhariwal (T = 1000, near-zero terminal SNR, so one-step samplers start
from almost pure noise), v-prediction (Salimans & Ho 2022), whose x0 stays well defined where
alpha_t ~ 0, AdamW with warm-up and cosine decay, and an EMA of the weights, which is what
ships. The weights live in ``bench/assets/<name>`` as diffusers pipeline folders and load
through the same code as the hub teachers.

``digits_eps`` is the same recipe with ``prediction_type=epsilon`` and ``beta_schedule=linear``:
an offline stand-in for the google/ddpm-* hub teachers (Ho et al. 2020: eps-prediction, betas
1e-4..0.02, T = 1000, alpha_{T-1} ~ 0.0064, x0 clipped to [-1, 1]) on the same network and data,
so eps-teacher code paths (x0 = (x_t - sigma eps) / alpha near alpha ~ 0) are exercised on a
trained model.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Callable, Optional

import torch

from bench.config import check_choices, option, to_json
from bench.data import digits_split



@dataclasses.dataclass(frozen=True)
class DigitsRecipe:
    iterations: int = option(4000, "optimiser steps")
    batch_size: int = option(128, "images per step")
    lr: float = option(1e-3, "peak learning rate (AdamW)")
    warmup: int = option(100, "linear warm-up steps")
    ema_decay: float = option(0.999, "EMA decay of the shipped weights")
    seed: int = option(0, "seed for init, batches, t and noise")
    block_out_channels: tuple[int, ...] = option((32, 64), "UNet widths per resolution")
    prediction_type: str = option("v_prediction", "network target: v_prediction (v = alpha eps - "
                                                  "sigma x0, digits) or epsilon (eps, digits_eps and "
                                                  "the google/ddpm-* hub teachers)",
                                  choices=("v_prediction", "epsilon"))
    beta_schedule: str = option("squaredcos_cap_v2", "diffusers beta schedule, T = 1000: "
                                                     "squaredcos_cap_v2 (cosine, digits) or linear "
                                                     "(DDPM's betas 1e-4..0.02, digits_eps and the hub "
                                                     "teachers)", choices=("squaredcos_cap_v2", "linear"))
    num_classes: int = option(0, "class-conditional with this many classes (digits_cond: 10); the "
                                 "UNet embeds num_classes + 1 labels, the last one meaning no class")
    label_dropout: float = option(0.1, "share of training images shown with the no-class label, so "
                                       "the network also learns the unconditional model that "
                                       "classifier-free guidance needs (Ho & Salimans 2022)")

    def __post_init__(self):
        check_choices(self)


# the shipped teachers: name -> (recipe, folder); `bench teacher train NAME` reproduces each
RECIPES = {"digits": DigitsRecipe(),
           "digits_eps": DigitsRecipe(prediction_type="epsilon", beta_schedule="linear"),
           "digits_cond": DigitsRecipe(num_classes=10)}
ASSETS = Path(__file__).resolve().parent.parent / "assets"


def make_unet(recipe: DigitsRecipe):
    from diffusers import UNet2DModel

    downs = ("DownBlock2D",) + ("AttnDownBlock2D",) * (len(recipe.block_out_channels) - 1)
    ups = tuple(t.replace("Down", "Up") for t in reversed(downs))
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=recipe.block_out_channels, down_block_types=downs,
                       up_block_types=ups, norm_num_groups=8, attention_head_dim=32,
                       num_class_embeds=recipe.num_classes + 1 if recipe.num_classes else None)


def make_scheduler(recipe: DigitsRecipe = DigitsRecipe()):
    """DDPM scheduler of the recipe (beta_start/end are read by the linear schedule only)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule=recipe.beta_schedule,
                         beta_start=1e-4, beta_end=0.02,
                         prediction_type=recipe.prediction_type, clip_sample=True)


def train_digits_teacher(recipe: DigitsRecipe, out_dir: Path,
                         progress: Optional[Callable[[int, float], None]] = None) -> Path:
    """Train the digits UNet and save the EMA weights to out_dir.

    Loss: || net(x_t, t[, c]) - target ||^2 with x_t = alpha_t x0 + sigma_t eps, t uniform on
    {0, ..., T-1}, and target v = alpha_t eps - sigma_t x0 (v_prediction) or eps (epsilon,
    DDPM's L_simple, Ho et al. 2020 eq. 14); class-conditional recipes show the digit's label c,
    or the no-class label with probability ``label_dropout``.
    """
    from diffusers import DDPMPipeline

    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    x_train, y_train = digits_split("train")
    unet, scheduler = make_unet(recipe), make_scheduler(recipe)
    ema = copy.deepcopy(unet).requires_grad_(False)
    alpha_bar = scheduler.alphas_cumprod.float()
    opt = torch.optim.AdamW(unet.parameters(), lr=recipe.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / recipe.warmup)
                                              * 0.5 * (1 + math.cos(math.pi * i / recipe.iterations)))
    for it in range(recipe.iterations):
        rows = torch.randint(0, len(x_train), (recipe.batch_size,), generator=gen)
        x0 = x_train[rows]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (recipe.batch_size,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        labels = _labels(recipe, y_train[rows], gen)
        a, s = alpha_bar[t].sqrt().view(-1, 1, 1, 1), (1 - alpha_bar[t]).sqrt().view(-1, 1, 1, 1)
        if recipe.prediction_type == "epsilon":
            target = eps  # DDPM's eps target (Ho et al. 2020, eq. 14)
        else:
            target = a * eps - s * x0  # the v target (Salimans & Ho 2022, eq. in sec. 4)
        loss = (unet(a * x0 + s * eps, t, class_labels=labels).sample - target).pow(2).mean()
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


def _labels(recipe: DigitsRecipe, y: torch.Tensor, gen: torch.Generator) -> Optional[torch.Tensor]:
    """The labels shown with a batch: the digits' own, the no-class label (num_classes) for a
    ``label_dropout`` share, or None for an unconditional recipe."""
    if not recipe.num_classes:
        return None
    dropped = torch.rand(len(y), generator=gen) < recipe.label_dropout
    return torch.where(dropped, torch.full_like(y, recipe.num_classes), y.long())
