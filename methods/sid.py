"""SiD: Score identity Distillation (Zhou et al. 2024), data-free, one step, in VP notation.

Generator (SiD sec. 4; official code mingyuanzhou/SiD): x_g = G_theta(sigma_init z) at the fixed
EDM level sigma_init = 2.5, a copy of the teacher. In VP (bench.matching's translation) that is
F_theta(sigma_t z, t_init) with sigma_t / alpha_t = sigma_init (alpha = 0.371, sigma = 0.928).
For each generated x_g, a noise level from EDM's grid, sigma = (sigma_max^(1/rho) + (1 - u)
(sigma_min^(1/rho) - sigma_max^(1/rho)))^rho with u ~ U[0, t_max] (t_max = 0.8: sigma in
[0.002, 24.4]), is taken to our t by sigma_t / alpha_t = sigma (clamped to the teacher's steps),
x_t = alpha_t x_g + sigma_t eps, and with f_phi the teacher's and f_psi the fake score's
x0-predictions (gradients flow through both into x_g; their weights are not trained here) the
generator loss is SiD's eq. 23 (its number as the author gives it in mingyuanzhou/SiD issue #8)
    L_theta = (1 - alpha) ||f_phi - f_psi||^2 + (f_phi - f_psi)^T (f_psi - x_g)
            = (f_phi - f_psi)^T ((f_phi - x_g) - alpha (f_phi - f_psi)),   alpha = 1.2,
per sample divided by SG(mean_i |x_g - f_phi|_i) (the official code's weight_factor, standing in
for omega(t) / sigma_t^4; in VP the score difference alpha_t (f_phi - f_psi) / sigma_t^2 carries
a per-t factor that this per-sample normalisation absorbs). We average over elements where the
code sums (times its loss scale 100): Adam does not see the scale.
The fake score f_psi starts as the teacher and is trained by the teacher's own denoising loss on
SG(x_g) (bench.matching.denoising_loss; the code's EDM-weighted x0 loss, in the teacher's own
parameterisation) at t ~ U{0..T-1}, the teacher's own law, one step per generator step, with
Adam beta1 = 0 for both, as the code. The code's own noise law for f_psi, EDM's log-normal
ln sigma ~ N(-1.2, 1.2^2) (half its draws below sigma 0.3, where uniform t puts under a tenth on
a 1000-step schedule), is ``fake_noise=edm``; measured worse here (seed 0): digits one-step FID
0.905 against 0.515, the 16-D Gaussian's mean 0.017 against 0.0045 RMS off (its scratch MLP fake
then sees few of the high noise levels the generator loss asks it about), gmm2d unchanged.
Cost of one generator step: 1 teacher forward per row.
"""
from __future__ import annotations

import dataclasses

import torch

from bench.config import option
from bench.matching import DistributionMatching, MatchingConfig, karras_sigma, per_sample_mean, t_of_sigma_ve
from bench.registry import METHODS


@dataclasses.dataclass(frozen=True)
class SiDConfig(MatchingConfig):
    iterations: int = option(400, "generator steps, each after one fake-score step (digits: ~1.6 s each on a "
                                  "busy 2-core CPU at batch 64)")
    lr: float = option(1e-4, "learning rate of the generator and the fake score (SiD's CIFAR-10 1e-5 at batch "
                             "256 over far more steps than a digits run)")
    eval_every: int = option(50, "quick FID of the one-step generator every N steps (0: off)")
    adam_beta1: float = option(0.0, "Adam's beta1 for both networks (SiD: 0)")
    alpha: float = option(1.2, "alpha of eq. 23 (SiD: 1.2; 1 for AFHQ); 0.5 is the plain (f_phi - f_psi)^T "
                               "((f_phi + f_psi)/2 - x_g) form")
    init_sigma: float = option(2.5, "EDM noise level sigma_init of the generator's input (SiD: 2.5)")
    t_max: float = option(0.8, "largest u of the noise-level draw sigma(u) on EDM's grid (SiD's tmax = 800/1000)")
    grad_clip: float = option(0.0, "clip each network's gradient norm (0: off, as SiD's code)")
    fake_noise: str = option("uniform", "noise law of the fake score's denoising loss: uniform (t ~ U{0..T-1}, "
                                        "the teacher's own, as DMD2) or edm (SiD's code: ln sigma ~ N(fake_p_mean, "
                                        "fake_p_std^2); digits FID 0.905 against uniform's 0.515)",
                             choices=("edm", "uniform"))
    fake_p_mean: float = option(-1.2, "mean of ln sigma for the fake score's loss (EDM and SiD: -1.2)")
    fake_p_std: float = option(1.2, "std of ln sigma for the fake score's loss (EDM and SiD: 1.2)")

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.t_max <= 1:
            raise ValueError("t_max must be in (0, 1]")
        if self.fake_p_std < 0:
            raise ValueError("fake_p_std must be >= 0")


@METHODS.register("sid", "SiD: Score identity Distillation, data-free, one step (Zhou et al. 2024); "
                          "class-conditional: the real score guided at --guidance-scale, the fake score not")
class SiD(DistributionMatching):
    Config = SiDConfig
    title = "SiD"

    def times(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """t where sigma_t / alpha_t = sigma(1 - u), u ~ U[0, t_max] (SiD's generator_loss)."""
        u = torch.rand(n, generator=gen, dtype=torch.float64) * self.config.t_max
        return t_of_sigma_ve(self.teacher, karras_sigma(1 - u)).to(self.device)

    def fake_times(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """t where sigma_t / alpha_t = exp(P_mean + P_std n), n ~ N(0, 1) (SiD's fake-score loss, EDM's law)."""
        if self.config.fake_noise == "uniform":
            return super().fake_times(n, gen)
        ln_sigma = torch.randn(n, generator=gen, dtype=torch.float64) * self.config.fake_p_std + self.config.fake_p_mean
        return t_of_sigma_ve(self.teacher, ln_sigma.exp()).to(self.device)

    def loss_at(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, cond=None) -> torch.Tensor:
        f_real, f_fake = self.scores(x, t, eps, cond)  # gradients flow through both into x
        x = x.float()
        with torch.no_grad():
            weight = (x - f_real).abs().flatten(1).mean(1).clamp(min=1e-5)
        diff = f_real - f_fake
        return per_sample_mean(diff * ((f_real - x) - self.config.alpha * diff)) / weight
