"""The one denoiser contract every teacher meets (cf. k-diffusion's external.py).

A teacher wraps a network that predicts one of eps, x0 ('sample') or v in its native
parameterisation; the adapter converts it at call time so every method sees the same
``predict(x_t, t) -> (x0, eps)`` pair. Both are derived from the native output directly
(never x0 -> eps -> x0), so an x0-predicting teacher keeps full precision at alpha_t ~ 0.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch
from torch import nn

from bench.schedule import NoiseSchedule

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Where a teacher's weights came from; logged as ``teacher.*`` params of every run."""

    source: str  # hub id, local path, or "analytic"
    revision: str = ""  # hub commit / snapshot, or a version tag
    sha256: str = ""  # of the weights file ("" for analytic teachers)

    def as_params(self) -> dict[str, str]:
        return {f"teacher.{k}": v for k, v in dataclasses.asdict(self).items()}


class Teacher(nn.Module):
    """A pretrained diffusion model behind one contract.

    Attributes used by methods and the evaluator: ``schedule`` (alpha_t, sigma_t on the
    teacher's grid), ``sample_shape`` (C, H, W) or (D,), ``clip_x0`` and ``data_range``
    (x0 predictions are clipped to it, as DDPM schedulers do, because f = (x - sigma e)/alpha
    explodes where alpha_t is tiny), ``num_classes`` (None if unconditional), ``provenance``, and for the
    evaluator ``features`` (a FEATURES name) and ``reference`` (returns reference samples).
    """

    def __init__(
        self,
        net: Callable[..., torch.Tensor],
        schedule: NoiseSchedule,
        prediction_type: str,
        sample_shape: tuple[int, ...],
        provenance: Provenance,
        clip_x0: bool = True,
        data_range: tuple[float, float] = (-1.0, 1.0),
        num_classes: Optional[int] = None,
        is_image: bool = True,
        features: str = "inception-v3-compat",
        reference: Optional[Callable[[], torch.Tensor]] = None,
    ):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}")
        self.net = net
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.sample_shape = tuple(sample_shape)
        self.provenance = provenance
        self.clip_x0 = clip_x0
        self.data_range = data_range
        self.num_classes = num_classes
        self.is_image = is_image
        self.features = features  # name in FEATURES used for FID/KID
        self.reference = reference  # real data for FID, or None: the teacher's own samples

    def replace(self, net=None, clip_x0: Optional[bool] = None) -> "Teacher":
        """The same teacher (schedule, shape, provenance, evaluation spec) with another network
        or clipping. Never ``copy.copy`` a Module: the copy shares its submodule dict."""
        return Teacher(self.net if net is None else net, self.schedule, self.prediction_type,
                       self.sample_shape, self.provenance, self.clip_x0 if clip_x0 is None else clip_x0,
                       self.data_range, self.num_classes, self.is_image, self.features, self.reference)

    @property
    def T(self) -> int:
        return self.schedule.T

    def coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha_t, sigma_t shaped to broadcast against ``like`` (computed in float64)."""
        t = torch.as_tensor(t, dtype=torch.float64).expand(like.shape[0])
        view = (-1,) + (1,) * (like.dim() - 1)
        a = self.schedule.alpha(t.cpu()).to(like.device, like.dtype).view(view)
        s = self.schedule.sigma(t.cpu()).to(like.device, like.dtype).view(view)
        return a, s

    def predict(self, x_t: torch.Tensor, t, cond=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0-prediction f, eps-prediction e) for x_t at step t; f clipped if ``clip_x0``."""
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device).expand(x_t.shape[0])
        out = self.net(x_t, t, cond)
        a, s = self.coefficients(t, x_t)
        if self.prediction_type == "epsilon":
            eps = out
            x0 = (x_t - s * eps) / a
        elif self.prediction_type == "sample":
            x0 = out
            eps = (x_t - a * x0) / s.clamp(min=1e-12)
        else:  # v = alpha eps - sigma x0 (Salimans & Ho 2022, sec. 4)
            x0 = a * x_t - s * out
            eps = s * x_t + a * out
        if self.clip_x0:
            lo, hi = self.data_range
            x0_clipped = x0.clamp(lo, hi)
            # keep (x0, eps) consistent with x_t = alpha x0 + sigma eps after clipping
            eps = torch.where(x0_clipped == x0, eps, (x_t - a * x0_clipped) / s.clamp(min=1e-12))
            x0 = x0_clipped
        return x0, eps

    def x0(self, x_t, t, cond=None) -> torch.Tensor:
        return self.predict(x_t, t, cond)[0]

    def eps(self, x_t, t, cond=None) -> torch.Tensor:
        return self.predict(x_t, t, cond)[1]

    def forward(self, x_t, t, cond=None) -> torch.Tensor:
        return self.eps(x_t, t, cond)
