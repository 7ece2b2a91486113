"""The one denoiser contract every teacher meets (cf. k-diffusion's external.py).

A teacher wraps a network that predicts one of eps, x0 ('sample') or v in its native
parameterisation; the adapter converts it at call time so every method sees the same
``predict(x_t, t) -> (x0, eps)`` pair. Both are derived from the native output directly
(never x0 -> eps -> x0), so an x0-predicting teacher keeps full precision at alpha_t ~ 0.
Students may also use Salimans & Ho's "both" output (``x_and_epsilon``, sec. 4): two heads,
x~ and eps~, merged as x0 = sigma_t^2 x~ + alpha_t (x_t - sigma_t eps~), which is stable at
both ends of the schedule.

Class-conditional teachers take labels 0..K-1, and label K (``num_classes``) for "no class", the
unconditional branch that label dropout trained. With ``guidance_scale`` w != 1 every prediction is
classifier-free guided (Ho & Salimans 2022, eq. 6, written as diffusers' pipelines write it):
out = out_u + w (out_c - out_u) on the network's native output, before the conversion to
(x0, eps) and before x0 is clipped. The conditional and unconditional rows go through the
network in one batched call, so a guided row costs two teacher forwards and one NFE.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable, Optional

import torch
from torch import nn

from bench.schedule import NoiseSchedule

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "x_and_epsilon")
_FIELDS = ("net", "schedule", "prediction_type", "sample_shape", "provenance", "clip_x0", "data_range",
           "num_classes", "is_image", "features", "dataset", "autocast", "scheduler_config",
           "guidance_scale", "dataset_labels", "text")


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
    explodes where alpha_t is tiny), ``num_classes`` (None if unconditional), ``provenance``,
    and for the evaluator ``features`` (a FEATURES name) and ``dataset`` (returns the data
    set the teacher was trained on, or None: references then come from the teacher itself).
    ``autocast``: whether the network may run in an enclosing autocast's lower precision.
    Frozen teachers run in float32 even inside a bf16 training step (False, the default), so
    training targets are as exact as the fp32 evaluation; students set it to True.
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
        dataset: Optional[Callable[[], torch.Tensor]] = None,
        autocast: bool = False,
        scheduler_config: Optional[dict] = None,
        guidance_scale: float = 1.0,
        dataset_labels: Optional[Callable[[], torch.Tensor]] = None,
        text=None,
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
        self.dataset = dataset  # real data for FID and data-based methods, or None
        self.autocast = autocast
        self.scheduler_config = scheduler_config
        if guidance_scale != 1.0 and not num_classes:
            raise ValueError(f"guidance scale {guidance_scale} needs a class-conditional teacher")
        self.guidance_scale = float(guidance_scale)
        self.dataset_labels = dataset_labels  # the class of each row of dataset(), where known
        self.text = text  # text-to-image teachers: prompts, their encoder, the VAE (bench.teachers.text)

    def replace(self, **changes) -> "Teacher":
        """The same teacher with some attributes changed (e.g. another ``net``). Never
        ``copy.copy`` a Module: the copy shares its submodule dict."""
        unknown = set(changes) - set(_FIELDS)
        if unknown:
            raise TypeError(f"Teacher has no attribute(s) {', '.join(sorted(unknown))}")
        return Teacher(**{**{k: getattr(self, k) for k in _FIELDS}, **changes})

    @property
    def T(self) -> int:
        return self.schedule.T

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The shape of what the evaluator scores: the decoded image of a latent teacher."""
        return tuple(self.text.image_shape) if self.text is not None else self.sample_shape

    def decoder(self) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """Latents -> images for latent (text-to-image) teachers; None where samples are the output."""
        return self.text.decode if self.text is not None else None

    @property
    def guided(self) -> bool:
        """Whether a prediction runs the network twice per row (classifier-free guidance)."""
        return bool(self.num_classes) and self.guidance_scale != 1.0

    @property
    def forwards_per_row(self) -> float:
        """Teacher forward passes a prediction costs per row: 2 when guided, else 1."""
        return 2.0 if self.guided else 1.0

    def labels(self, cond, n: int, device) -> Optional[torch.Tensor]:
        """The labels a conditional network sees: ``cond`` as long, or "no class" (label
        ``num_classes``) for every row where ``cond`` is None; None for unconditional teachers."""
        if not self.num_classes:
            return cond
        if cond is None:
            return torch.full((n,), self.num_classes, dtype=torch.long, device=device)
        return torch.as_tensor(cond, device=device).long().expand(n)

    def fingerprint(self) -> dict:
        """Everything that defines this teacher's predictions, for cache keys: provenance,
        parameterisation, clipping, shape, the schedule, and the network (architecture and
        state; a file's sha256 stands for the state where the weights came from a file)."""
        net = hashlib.sha256(repr(self.net).encode())
        if not self.provenance.sha256 and isinstance(self.net, nn.Module):
            for key, value in self.net.state_dict().items():  # analytic parameters, in-memory nets
                net.update(key.encode())
                net.update(value.detach().cpu().contiguous().numpy().tobytes())
        schedule = hashlib.sha256(self.schedule.alphas_cumprod.numpy().tobytes()).hexdigest()
        return {**dataclasses.asdict(self.provenance), "prediction_type": self.prediction_type,
                "clip_x0": self.clip_x0, "data_range": list(self.data_range),
                "sample_shape": list(self.sample_shape), "num_classes": self.num_classes,
                "schedule": schedule[:16], "net": net.hexdigest()[:16],
                **({"guidance_scale": self.guidance_scale} if self.guided else {}),
                **({"prompts": self.text.digest()} if self.text is not None else {})}

    @torch.no_grad()
    def nonfinite(self) -> str:
        """'' if the weights and the predictions on a fixed probe (2 noise draws at the first
        and last step: two small forwards) are finite, else what is not: a
        teacher with a NaN weight gives NaN samples, and every score of them would be wrong."""
        device = torch.device("cpu")
        if isinstance(self.net, nn.Module):
            for name, tensor in [*self.net.named_parameters(), *self.net.named_buffers()]:
                bad = int((~torch.isfinite(tensor)).sum()) if tensor.is_floating_point() else 0
                if bad:
                    return f"{bad} of its weights in {name} are not finite (NaN or inf)"
                device = tensor.device
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((2,) + self.sample_shape, generator=gen).to(device)
        cond = torch.zeros(2, dtype=torch.long, device=device) if self.num_classes else None
        for t in sorted({self.T - 1, 0}, reverse=True):
            x0, eps = self.predict(x, t, cond)
            if not (torch.isfinite(x0).all() and torch.isfinite(eps).all()):
                return f"its prediction at step {t} is not finite (NaN or inf) on finite noise"
        return ""

    def coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha_t, sigma_t shaped to broadcast against ``like`` (computed in float64)."""
        t = torch.as_tensor(t, dtype=torch.float64).expand(like.shape[0])
        view = (-1,) + (1,) * (like.dim() - 1)
        a = self.schedule.alpha(t.cpu()).to(like.device, like.dtype).view(view)
        s = self.schedule.sigma(t.cpu()).to(like.device, like.dtype).view(view)
        return a, s

    def _guided(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """The native output, classifier-free guided where ``guided`` (module docstring)."""
        c = self.labels(cond, len(x_t), x_t.device)
        if not self.guided:
            return self._net(x_t, t, c)
        none = torch.full_like(c, self.num_classes)
        out_c, out_u = self._net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([c, none])).chunk(2)
        return out_u + self.guidance_scale * (out_c - out_u)

    def _net(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        if self.autocast:
            return self.net(x_t, t, cond)
        with torch.autocast(x_t.device.type, enabled=False):  # a no-op outside an autocast region
            return _full(self.net(_full(x_t), t, cond))

    def predict(self, x_t: torch.Tensor, t, cond=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0-prediction f, eps-prediction e) for x_t at step t, guided where ``guided``;
        f clipped if ``clip_x0`` (after guidance)."""
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device).expand(x_t.shape[0])
        out = self._guided(x_t, t, cond)
        if not self.autocast:
            x_t = _full(x_t)
        a, s = self.coefficients(t, x_t)
        if self.prediction_type == "epsilon":
            eps = out
            x0 = (x_t - s * eps) / a
        elif self.prediction_type == "sample":
            x0 = out
            eps = (x_t - a * x0) / s.clamp(min=1e-12)
        elif self.prediction_type == "v_prediction":  # v = alpha eps - sigma x0 (Salimans & Ho 2022, sec. 4)
            x0 = a * x_t - s * out
            eps = s * x_t + a * out
        else:  # x_and_epsilon: x~ and eps~ in the two halves of the channels, merged (sec. 4)
            x_head, eps_head = out.chunk(2, dim=1)
            x0 = s ** 2 * x_head + a * (x_t - s * eps_head)
            eps = (x_t - a * x0) / s.clamp(min=1e-12)
        if self.clip_x0:
            lo, hi = self.data_range
            x0_clipped = x0.clamp(lo, hi)
            # keep (x0, eps) consistent with x_t = alpha x0 + sigma eps after clipping
            eps = torch.where(x0_clipped == x0, eps, (x_t - a * x0_clipped) / s.clamp(min=1e-12))
            x0 = x0_clipped
        return x0, eps

    def output(self, x_t: torch.Tensor, t, cond=None) -> torch.Tensor:
        """The network's raw output at (x_t, t): its native parameterisation, what it was trained on
        (guided where ``guided``)."""
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device).expand(x_t.shape[0])
        return self._guided(x_t, t, cond)

    def x0(self, x_t, t, cond=None) -> torch.Tensor:
        return self.predict(x_t, t, cond)[0]

    def eps(self, x_t, t, cond=None) -> torch.Tensor:
        return self.predict(x_t, t, cond)[1]

    def forward(self, x_t, t, cond=None) -> torch.Tensor:
        return self.eps(x_t, t, cond)


def _full(x: torch.Tensor) -> torch.Tensor:
    """x in float32 unless it is already float32 or float64 (exact teachers compute in float64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()
