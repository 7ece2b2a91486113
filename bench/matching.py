"""Distribution matching, the machinery DMD2 (methods/dmd2.py) and SiD (methods/sid.py) share.

Both train a one-step generator G_theta against a "fake score" network f_psi that follows the
generator's own distribution: f_psi starts as a copy of the teacher and learns, by the teacher's
own denoising loss on G_theta's samples, to denoise them; G_theta then moves its samples where
the teacher's x0-prediction f_phi and f_psi disagree. Neither needs data. A method file supplies
its config and its generator loss; this module holds the generator, the fake score, the fake
score's loss and the training stage (two networks in the shared loop: f_psi is a Part with its
own optimiser, updated ``fake_updates`` times before every generator step).

EDM (VE) to our VP notation: x_VE = x_t / alpha_t, sigma_VE = sigma_t / alpha_t; a denoiser
D(x_VE; sigma_VE) is our x0-prediction f(x_t, t) at the t where sigma_t / alpha_t = sigma_VE
(x0-predictions agree in both). So EDM's generator input sigma_init z at level sigma_init is
x_t = alpha_t * 0 + sigma_t z at that t: G_theta(z) = F_theta(sigma_t z, t_init).
"""
from __future__ import annotations

import abc
import copy
import dataclasses
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from bench.config import option
from bench.errors import BenchError
from bench.method import DistillContext, Distilled, Method, Part, TrainStage
from bench.portable import TimeMLP
from bench.sampling import Sampler
from bench.teachers.base import Teacher
from bench.train import TrainConfig, frozen_teacher, train

EPS_AS_V_BELOW = 0.1  # an eps-net's x0 = (x - sigma e) / alpha multiplies its error by 1/alpha


@dataclasses.dataclass(frozen=True)
class MatchingConfig(TrainConfig):
    """Fields DMD2 and SiD share."""

    eval_every: int = option(100, "quick FID of the one-step generator every N steps (0: off)")
    fake_lr: float = option(0.0, "learning rate of the fake score f_psi (0: the generator's lr, as both papers)")
    fake_updates: int = option(1, "optimiser steps of f_psi before each generator step (DMD2's two-time-scale rule: 5)")
    init_sigma: float = option(0.0, "EDM noise level sigma_init = sigma_t / alpha_t at which G_theta reads the "
                                    "teacher's network: G(z) = F(sigma_t z, t_init); 0: the teacher's t_max")
    fake_warmup: int = option(-1, "first generator steps that only train f_psi (G waits, no teacher forward): "
                                  "-1 auto: 0 where f_psi starts as the teacher, 200 where it is an MLP from "
                                  "scratch (analytic teachers), which must first learn G's samples")
    mlp_width: int = option(256, "width of the MLP generator and fake score (teachers without a network)")

    def __post_init__(self):
        super().__post_init__()
        if self.fake_warmup < -1:
            raise ValueError("fake_warmup must be >= 0, or -1 (auto)")
        if self.fake_lr < 0 or self.fake_updates < 1 or self.init_sigma < 0 or self.mlp_width < 1:
            raise ValueError("fake_lr >= 0, fake_updates >= 1, init_sigma >= 0 and mlp_width >= 1 are required")


def t_of_sigma_ve(teacher: Teacher, sigma_ve: torch.Tensor) -> torch.Tensor:
    """The (fractional) step t where sigma_t / alpha_t = sigma_ve, clamped to [0, T-1]."""
    lam = -2 * torch.log(torch.as_tensor(sigma_ve, dtype=torch.float64))  # log-SNR = log(alpha^2 / sigma^2)
    return teacher.schedule.t_of_log_snr(lam)


class Generator(nn.Module):
    """G_theta(z) = c_skip x_in + c_out net(x_in, t_init), x_in = in_scale z (in_scale = sigma_{t_init}).

    The readout (c_skip, c_out) is the teacher's own x0 conversion at t_init, so G starts as the
    teacher's one-step x0-prediction from pure noise (DMD2 and SiD initialise G from the
    teacher): v: (alpha, -sigma); sample: (0, 1); eps: (1/alpha, -sigma/alpha), except where
    alpha_{t_init} < 0.1, where an eps-net's head is read as if it were v (alpha, -sigma), as
    bench.student does for BOOT: 1/alpha would multiply its error by up to 157 (DDPM's t_max)."""

    def __init__(self, net: nn.Module, t_init: float, in_scale: float, c_skip: float, c_out: float):
        super().__init__()
        self.net, self.t_init, self.in_scale, self.c_skip, self.c_out = net, t_init, in_scale, c_skip, c_out

    @classmethod
    def from_teacher(cls, teacher: Teacher, init_sigma: float, width: int) -> "Generator":
        t_init = float(teacher.T - 1) if init_sigma == 0 else float(t_of_sigma_ve(teacher, init_sigma))
        a, s = (float(v) for v in (teacher.schedule.alpha(t_init), teacher.schedule.sigma(t_init)))
        if not any(True for _ in teacher.net.parameters()):
            dim = int(torch.tensor(teacher.sample_shape).prod())
            return cls(TimeMLP(dim, teacher.T, width, num_classes=teacher.num_classes or 0), t_init, s, 0.0, 1.0)
        net = copy.deepcopy(teacher.net).requires_grad_(True).train()
        kind = teacher.prediction_type
        if kind == "v_prediction" or (kind == "epsilon" and a < EPS_AS_V_BELOW):
            return cls(net, t_init, s, a, -s)
        if kind == "epsilon":
            return cls(net, t_init, s, 1 / a, -s / a)
        if kind == "sample":
            return cls(net, t_init, s, 0.0, 1.0)
        raise BenchError(f"a generator cannot start from a {kind} teacher; use an epsilon, sample or v teacher")

    def forward(self, z: torch.Tensor, cond=None) -> torch.Tensor:
        x_in = self.in_scale * z
        t = torch.full((len(z),), self.t_init, device=z.device)
        return self.c_skip * x_in + self.c_out * self.net(x_in, t, cond)

    def rule(self) -> dict:
        """bench.portable's one_step rule for this generator (what the run's student model ships)."""
        return {"kind": "one_step", "t": self.t_init, "c_skip": self.c_skip, "c_out": self.c_out,
                "in_scale": self.in_scale}


def fake_score(teacher: Teacher, width: int) -> Teacher:
    """f_psi: a trainable copy of the teacher's network, unclipped (DMD2 and SiD copy the teacher);
    for teachers without a network (analytic), an MLP v-predictor trained from scratch (v, not
    x0: its x0 = alpha x_t - sigma v is x_t at low noise whatever the MLP, where an x0-MLP would
    have to learn the identity). Never guided: f_psi models the generator's own class-conditional
    distribution, which the guided real score pulls it toward (DMD2 sec. 4.4)."""
    if not any(True for _ in teacher.net.parameters()):
        dim = int(torch.tensor(teacher.sample_shape).prod())
        mlp = TimeMLP(dim, teacher.T, width, num_classes=teacher.num_classes or 0)
        return teacher.replace(net=mlp, prediction_type="v_prediction", clip_x0=False, autocast=True,
                               guidance_scale=1.0)
    # in the teacher's own mode (eval: no dropout), so f_psi = f_phi exactly at the start
    return teacher.replace(net=copy.deepcopy(teacher.net).requires_grad_(True), clip_x0=False, autocast=True,
                           guidance_scale=1.0)


def native_target(prediction_type: str, x0: torch.Tensor, eps: torch.Tensor, a, s) -> torch.Tensor:
    """What a network of this parameterisation was trained to output for x_t = a x0 + s eps."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    return a * eps - s * x0  # v (Salimans & Ho 2022, sec. 4)


def denoising_loss(fake: Teacher, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, cond=None) -> torch.Tensor:
    """The teacher's own training loss on samples x (of labels ``cond``), per sample: x_t =
    alpha_t x + sigma_t eps, mean squared error of the raw output against its native target
    (DDPM's simple loss for eps-nets, with t ~ U{0..T-1}: DMD2's SD fake loss)."""
    a, s = fake.coefficients(t, x)
    out = fake.output(a * x + s * eps, t, cond)
    return (out.float() - native_target(fake.prediction_type, x, eps, a, s).float()).pow(2).flatten(1).mean(1)


class DistributionMatching(Method):
    """A one-step generator trained against a fake score; subclasses define ``generator_loss``."""

    Config = MatchingConfig
    title = "distribution matching"

    def __init__(self, teacher, config: MatchingConfig, device):
        super().__init__(frozen_teacher(teacher, config), config, device)
        # f_phi unclipped: with f_psi = f_phi the two must agree exactly (zero generator gradient)
        self.real = self.teacher.replace(clip_x0=False)
        self.G = Generator.from_teacher(teacher, config.init_sigma, config.mlp_width).to(device)
        self.fake = fake_score(self.teacher, config.mlp_width).to(device)
        scratch = not any(True for _ in teacher.net.parameters())
        self.warmup = config.fake_warmup if config.fake_warmup >= 0 else (200 if scratch else 0)
        self.ema = self.G
        self.history: list[dict] = []

    def noise(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """G's inputs for n rows: z, and a label per row for class-conditional teachers (drawn
        only then, so unconditional runs keep their random stream)."""
        z = torch.randn((n,) + self.teacher.sample_shape, generator=gen).to(self.device)
        if not self.teacher.num_classes:
            return z, None
        return z, torch.randint(0, self.teacher.num_classes, (n,), generator=gen).to(self.device)

    @abc.abstractmethod
    def times(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """The steps t at which the generator loss compares the two scores."""

    @abc.abstractmethod
    def loss_at(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, cond=None) -> torch.Tensor:
        """Per-sample generator loss of generated x of labels ``cond`` (gradients to G) at
        x_t = alpha_t x + sigma_t eps; one teacher prediction per row."""

    def scores(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
               cond=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(f_phi, f_psi): the teacher's (guided at the run's w) and the fake score's
        x0-predictions (float32) at x_t = alpha_t x + sigma_t eps; one teacher prediction per row."""
        a, s = self.teacher.coefficients(t, x)
        x_t = a * x + s * eps
        return self.real.predict(x_t, t, cond)[0].float(), self.fake.predict(x_t, t, cond)[0].float()

    def generator_loss(self, x: torch.Tensor, gen: torch.Generator, cond=None) -> torch.Tensor:
        t = self.times(len(x), gen)
        return self.loss_at(x, t, torch.randn(x.shape, generator=gen).to(x.device), cond)

    def _generator_step(self, step: int, gen: torch.Generator, rows: Optional[int] = None):
        z, cond = self.noise(rows or self.config.batch_size, gen)
        x = self.G(z, cond)
        if step < self.warmup:  # a zero loss: Adam's first moments stay 0, so G does not move
            return 0.0 * x.float().flatten(1).sum(1), 0.0
        return self.generator_loss(x, gen, cond), self.real.forwards_per_row

    def fake_times(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """The steps t of f_psi's denoising loss: t ~ U{0..T-1}, the teacher's own training law
        (DMD2's SD fake loss); a method whose code trains its fake score elsewhere overrides it."""
        return torch.randint(0, self.fake.T, (n,), generator=gen).to(self.device)

    def _fake_step(self, step: int, gen: torch.Generator, rows: Optional[int] = None):
        with torch.no_grad():  # f_psi learns G's distribution; no gradient to G
            z, cond = self.noise(rows or self.config.batch_size, gen)
            x = self.G(z, cond)
        t = self.fake_times(len(x), gen)
        return denoising_loss(self.fake, x, t, torch.randn(x.shape, generator=gen).to(x.device), cond), 0.0

    def training_stage(self) -> TrainStage:
        cfg = self.config
        fake = Part("fake", self.fake.net, self._fake_step, cfg.fake_lr or cfg.lr, cfg.fake_updates)
        return TrainStage(self.G, self._generator_step, cfg, frozen=(self.teacher.net,),
                          quick_sampler=self._one_step, parts=(fake,))

    def distill(self, ctx: DistillContext) -> dict[str, float]:
        self.ema, self.history, cost = train(self.training_stage(), ctx)
        return cost

    def max_nfe(self) -> int:
        return 1

    def _one_step(self, G: Generator) -> Sampler:
        def sample(noise: torch.Tensor, cond=None) -> torch.Tensor:
            return G(noise, cond)

        return sample

    def sampler(self, nfe: int) -> Sampler:
        self.check_nfe(nfe)
        return self._one_step(self.ema)

    def distilled(self) -> dict[int, Distilled]:
        return {1: Distilled(self.ema.net, self.ema.rule())}

    def save_artifacts(self, out_dir: Path) -> None:
        from bench.artifacts import plot_training
        from bench.files import save_weights

        save_weights(self.ema, out_dir / "student.safetensors")
        if self.history:
            plot_training(self.history, out_dir / "training_curve.png", self.title)


def per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.float().flatten(1).mean(1)


def karras_sigma(u: torch.Tensor, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
    """EDM's sigma(u) = (sigma_max^(1/rho) + u (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, u in [0, 1]."""
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (hi + u * (lo - hi)) ** rho

