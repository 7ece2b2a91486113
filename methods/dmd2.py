"""DMD2 (Yin et al. 2024, "Improved Distribution Matching Distillation"), data-free: no GAN term.

A one-step generator x = G_theta(z) (bench.matching.Generator: the teacher's x0-prediction from
pure noise at t_max to start with) is moved along the distribution-matching gradient of DMD
(Yin et al. 2023; eq. 7, normalised per sample by eq. 8, the numbers DMD2's author gives in
tianweiy/DMD2 issue #46): for t ~ U{t_lo..t_hi} (DMD2: 2% and 98% of T) and
x_t = alpha_t x + sigma_t eps,
    grad = (f_psi(x_t, t) - f_phi(x_t, t)) / mean_i |x - f_phi(x_t, t)|_i
with f_phi the teacher's x0-prediction (the "real" score) and f_psi the fake score's, both
without gradient, and the generator loss
    L_G = 0.5 || x - SG(x - grad) ||^2   (mean over elements), so dL_G/dx = grad / numel.
In VP notation DMD's eq. 7 carries a factor alpha_t that DMD2's code (which we follow) drops;
with per-sample normalisation it only reweights time steps.
f_psi starts as the teacher and learns G's distribution by the teacher's own denoising loss on
SG(x) (bench.matching.denoising_loss; DMD2's SD fake loss), ``fake_updates`` = 5 optimiser steps
per generator step (DMD2's two-time-scale update rule). The GAN term of DMD2 needs real images
and is not implemented; neither is multi-step generation by backward simulation.
Cost of one generator step: 1 teacher forward per row; its 5 fake steps cost no teacher forward.
"""
from __future__ import annotations

import dataclasses

import torch

from bench.config import option
from bench.matching import DistributionMatching, MatchingConfig, per_sample_mean
from bench.registry import METHODS


@dataclasses.dataclass(frozen=True)
class DMD2Config(MatchingConfig):
    iterations: int = option(250, "generator steps, each after fake_updates fake-score steps (digits: ~2-4 s "
                                  "each on a busy 2-core CPU at batch 64)")
    lr: float = option(1e-4, "learning rate of the generator (and the fake score unless fake_lr is set); DMD2 "
                             "used 2e-6 at batch 280 for ImageNet-64, over far more steps than a digits run")
    fake_updates: int = option(5, "fake-score steps per generator step (DMD2's two-time-scale rule: 5)")
    t_lo: float = option(0.02, "smallest t of the matching gradient as a share of T (DMD2: 0.02)")
    t_hi: float = option(0.98, "largest t of the matching gradient as a share of T (DMD2: 0.98)")
    eval_every: int = option(50, "quick FID of the one-step generator every N steps (0: off)")
    grad_clip: float = option(10.0, "clip each network's gradient norm to this (DMD2: 10)")

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.t_lo <= self.t_hi <= 1:
            raise ValueError("0 <= t_lo <= t_hi <= 1 is required")


@METHODS.register("dmd2", "DMD2: data-free distribution matching, one step (Yin et al. 2024); its GAN term needs real "
                           "images and is not implemented; class-conditional: the real score guided at "
                           "--guidance-scale, the fake score not")
class DMD2(DistributionMatching):
    Config = DMD2Config
    title = "DMD2"

    def times(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """t ~ U{int(t_lo T) .. int(t_hi T)}, within the teacher's steps (DMD2's min/max_step)."""
        T = self.teacher.T
        lo, hi = int(self.config.t_lo * T), min(int(self.config.t_hi * T), T - 1)
        return torch.randint(lo, hi + 1, (n,), generator=gen).to(self.device)

    def matching_gradient(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, cond=None) -> torch.Tensor:
        """(f_psi - f_phi) / mean|x - f_phi| at x_t = alpha x + sigma eps, without gradients;
        f_phi guided at the run's w for class-conditional teachers."""
        with torch.no_grad():
            f_real, f_fake = self.scores(x, t, eps, cond)
            weight = (x.float() - f_real).abs().flatten(1).mean(1).view((-1,) + (1,) * (x.dim() - 1))
            return torch.nan_to_num((f_fake - f_real) / weight)

    def loss_at(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, cond=None) -> torch.Tensor:
        grad = self.matching_gradient(x, t, eps, cond)
        return 0.5 * per_sample_mean((x.float() - (x.float() - grad).detach()) ** 2)
