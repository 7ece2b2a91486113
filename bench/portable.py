"""A distilled student as a self-contained sampler: its networks plus the exact sampling rule.

This file imports nothing from ``bench``: it ships, as it is, inside every student's MLflow
model (``code/portable.py``) and every ``bench export`` folder, so a student samples in a
process that has torch (and diffusers, for UNet students) but not this harness.

A student folder holds ``sampling.json``::

    {"sample_shape": [1, 8, 8], "data_range": [-1, 1], "num_classes": null, "default_nfe": 1,
     "samplers": {"1": {"network": "nets/nfe_1", "rule": {"kind": "one_step", ...}}}}

and each network folder a diffusers ``UNet2DModel`` (``from_pretrained``) or a ``TimeMLP``
(``network.json`` + ``model.safetensors``). The rules, with eps the noise of a sample's seed:

- ``one_step``: x = c_skip x_in + c_out net(x_in, t), x_in = in_scale eps (in_scale 1 if absent)
  (BOOT's g_theta(eps, -1); DMD2's and SiD's G_theta(z) = F(sigma_init z, t_init));
- ``ddim``: deterministic DDIM (eta = 0) over ``timesteps`` from x = eps, the network's output
  read as ``prediction_type`` with alpha_bar from ``alphas_cumprod`` (1 after the last step),
  x0 clipped to the data range if ``clip_x0`` (eps re-derived from the clipped x0);
- ``consistency``: multistep consistency sampling (methods/consistency.py): for each tau of
  ``times``, x_tau = eps at the first, else alpha_tau x + sigma_tau z_j with z_j =
  ``fresh_noise(eps, j)``; then x = c_skip(tau) x_tau + c_out(tau) F, F the network's output read
  as x0 through ``prediction_type`` (as ``ddim``, clipped only if ``clip_x0``), c_skip/c_out from
  ``sigma_data`` and ``timestep_scaling`` (``scalings``); x clamped to ``data_range`` if ``clip``.
Noise: sample i with seed s_i is ``torch.randn(sample_shape, generator=Generator().manual_seed(s_i))``,
so images depend on their own seed only, never on the batch.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

T_MIN = -1  # the data end of the time axis (alpha = 1, sigma = 0): a consistency function's t_min


class TimeMLP(nn.Module):
    """MLP student for vector data: [x, sinusoidal(t / T), class embedding] -> prediction of the
    same size. With ``num_classes`` the class c enters as a learned embedding (row c; row
    ``num_classes`` stands for no class, cond None); without, the condition is ignored."""

    def __init__(self, dim: int, T: int, width: int = 256, depth: int = 3, freqs: int = 16, num_classes: int = 0):
        super().__init__()
        self.T, self.freqs, self.num_classes = T, freqs, num_classes
        self.kwargs = {"dim": dim, "T": T, "width": width, "depth": depth, "freqs": freqs}
        if num_classes:  # only then: networks saved before the field load unchanged
            self.kwargs["num_classes"] = num_classes
        self.classes = nn.Embedding(num_classes + 1, 2 * freqs) if num_classes else None
        layers, d_in = [], dim + 2 * freqs * (2 if num_classes else 1)
        for _ in range(depth):
            layers += [nn.Linear(d_in, width), nn.SiLU()]
            d_in = width
        self.body = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        u = (t.float() + 1) / (self.T + 1)  # t in [-1, T-1] -> (0, 1]
        k = torch.arange(self.freqs, device=x.device, dtype=torch.float32)
        ang = u[:, None] * math.pi * (2.0 ** (k / 2))[None]  # periods from 2 down to ~1/90 of the range
        features = [x.flatten(1), ang.sin(), ang.cos()]
        if self.classes is not None:
            c = torch.full((len(x),), self.num_classes) if cond is None else torch.as_tensor(cond).long()
            features.append(self.classes(c.to(x.device)))
        return self.body(torch.cat(features, dim=1)).view_as(x)


class PromptUNet(nn.Module):
    """A text-conditional UNet (diffusers' UNet2DConditionModel) whose class c is prompt c:
    ``context`` holds the text encoder's hidden states of the K prompts and, in row K, of the
    empty prompt ("no class": the unconditional branch of classifier-free guidance)."""

    def __init__(self, unet: nn.Module, context: torch.Tensor):
        super().__init__()
        self.unet = unet
        self.register_buffer("context", context)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        none = len(self.context) - 1
        c = torch.full((len(x),), none) if cond is None else torch.as_tensor(cond).long()
        states = self.context[c.to(self.context.device)].to(x.dtype)
        return self.unet(x, t, encoder_hidden_states=states).sample


def seed_noise(seeds: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """eps for each seed: one CPU generator per sample (the harness's evaluator draws the same)."""
    out = torch.empty((len(seeds),) + tuple(shape))
    for row, seed in enumerate(seeds):
        out[row] = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(seed) % 2**32))
    return out


def load_network(folder: Path) -> nn.Module:
    """A network saved by the harness: a diffusers UNet2DModel folder, a TimeMLP, or a PromptUNet."""
    folder = Path(folder)
    if (folder / "network.json").is_file():
        from safetensors.torch import load_file

        spec = json.loads((folder / "network.json").read_text())
        if spec["class"] == "PromptUNet":
            from diffusers import UNet2DConditionModel

            unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"), low_cpu_mem_usage=False)
            return PromptUNet(unet, load_file(str(folder / "context.safetensors"))["context"]).eval()
        net = TimeMLP(**spec["kwargs"])
        net.load_state_dict(load_file(str(folder / "model.safetensors")))
        return net.eval()
    from diffusers import UNet2DModel

    # low_cpu_mem_usage=False: the same load, without diffusers' advice to install accelerate
    return UNet2DModel.from_pretrained(str(folder), low_cpu_mem_usage=False).eval()


def call(net: nn.Module, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
    """The raw network output at (x, t): diffusers UNets take class labels by keyword."""
    if hasattr(net, "config") and hasattr(net, "conv_out"):
        embeds = net.config.get("num_class_embeds")
        if cond is None and embeds:  # the last class embedding stands for "no class"
            cond = torch.full((len(x),), embeds - 1, dtype=torch.long, device=x.device)
        return net(x, t, class_labels=cond).sample
    return net(x, t, cond)


def _alpha_sigma(rule: dict, t: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t) from ``alphas_cumprod`` (alpha_bar = 1 at t < 0), float64 cast to ``dtype``."""
    ab = 1.0 if t < 0 else float(rule["alphas_cumprod"][t])
    return (torch.tensor(math.sqrt(ab), dtype=torch.float64).to(dtype),
            torch.tensor(math.sqrt(max(1 - ab, 0.0)), dtype=torch.float64).to(dtype))


def _x0_eps(rule: dict, out: torch.Tensor, x: torch.Tensor, t: int):
    """(x0, eps) from the raw output, as the harness's Teacher.predict computes them."""
    a, s = _alpha_sigma(rule, t, x.dtype)
    kind = rule["prediction_type"]
    if kind == "epsilon":
        eps, x0 = out, (x - s * out) / a
    elif kind == "sample":
        x0, eps = out, (x - a * out) / s.clamp(min=1e-12)
    elif kind == "v_prediction":  # v = alpha eps - sigma x0
        x0, eps = a * x - s * out, s * x + a * out
    else:  # x_and_epsilon: x~ and eps~ in the two halves of the channels (Salimans & Ho sec. 4)
        x_head, eps_head = out.chunk(2, dim=1)
        x0 = s ** 2 * x_head + a * (x - s * eps_head)
        eps = (x - a * x0) / s.clamp(min=1e-12)
    if rule.get("clip_x0"):
        lo, hi = rule["data_range"]
        clipped = x0.clamp(lo, hi)
        eps = torch.where(clipped == x0, eps, (x - a * clipped) / s.clamp(min=1e-12))
        x0 = clipped
    return x0, eps


def fresh_noise(noise: torch.Tensor, j: int) -> torch.Tensor:
    """z for consistency sampling step j (>= 1): row i from a generator seeded by a hash of noise[i]
    and j, so a sample depends on its own noise only (not on the batch), and the steps' z differ."""
    rows = noise.detach().float().cpu().contiguous().view(len(noise), -1).numpy()
    out = torch.empty((len(noise),) + tuple(noise.shape[1:]))
    for i, row in enumerate(rows):
        digest = hashlib.blake2b(row.tobytes() + j.to_bytes(4, "little"), digest_size=8).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") % 2 ** 63)
        out[i] = torch.randn(noise.shape[1:], generator=gen)
    return out.to(noise.device, noise.dtype)


def scalings(t: torch.Tensor, sigma_data: float, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip(t), c_out(t)) of a consistency function in float64, u = scaling (t - t_min):
    c_skip = sigma_data^2 / (u^2 + sigma_data^2), c_out = u / sqrt(u^2 + sigma_data^2), so
    c_skip(t_min) = 1 and c_out(t_min) = 0 exactly."""
    u = scaling * (torch.as_tensor(t, dtype=torch.float64) - T_MIN)
    c_skip = sigma_data ** 2 / (u ** 2 + sigma_data ** 2)
    c_out = u / (u ** 2 + sigma_data ** 2).sqrt()
    return c_skip, c_out


def _consistency(rule: dict, net: nn.Module, eps: torch.Tensor, cond=None) -> torch.Tensor:
    x = None
    for j, tau in enumerate(rule["times"]):
        t = torch.full((len(eps),), float(tau), device=eps.device)
        if x is None:
            x_tau = eps
        else:
            a, s = _alpha_sigma(rule, tau, x.dtype)
            x_tau = a * x + s * fresh_noise(eps, j)
        F = _x0_eps(rule, call(net, x_tau, t, cond), x_tau, tau)[0]
        c_skip, c_out = scalings(t.double().cpu(), rule["sigma_data"], rule["timestep_scaling"])
        view = (-1,) + (1,) * (x_tau.dim() - 1)
        x = c_skip.to(x_tau.device, F.dtype).view(view) * x_tau + c_out.to(x_tau.device, F.dtype).view(view) * F
        if rule["clip"]:
            x = x.clamp(*rule["data_range"])
    return x


def _one_step(rule: dict, net: nn.Module, eps: torch.Tensor, cond=None) -> torch.Tensor:
    t = torch.full((len(eps),), float(rule["t"]), device=eps.device)
    x_in = rule["in_scale"] * eps if "in_scale" in rule else eps
    return rule["c_skip"] * x_in + rule["c_out"] * call(net, x_in, t, cond)


def _ddim(rule: dict, net: nn.Module, eps: torch.Tensor, cond=None) -> torch.Tensor:
    x, steps = eps, list(rule["timesteps"]) + [-1]
    for t, s in zip(steps[:-1], steps[1:]):
        x0, e = _x0_eps(rule, call(net, x, torch.full((len(x),), float(t), device=x.device), cond), x, t)
        a_s, s_s = _alpha_sigma(rule, s, x.dtype)
        x = a_s * x0 + s_s * e
    return x


RULES = {"one_step": _one_step, "ddim": _ddim, "consistency": _consistency}


@torch.no_grad()
def apply_rule(rule: dict, net: nn.Module, eps: torch.Tensor, cond=None) -> torch.Tensor:
    """Samples from noise ``eps`` by ``rule`` (see the module docstring)."""
    if rule["kind"] not in RULES:
        raise ValueError(f"unknown sampling rule {rule['kind']!r}; known: {', '.join(RULES)}")
    return RULES[rule["kind"]](rule, net, eps, cond)


class StudentSampler:
    """A student folder (``sampling.json`` + networks) as ``sample(seeds, labels, nfe) -> images``."""

    def __init__(self, folder: str | Path, device: str = "cpu"):
        self.folder = Path(folder)
        self.spec = json.loads((self.folder / "sampling.json").read_text())
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                                   else "cpu" if device == "auto" else device)
        self.nets: dict[str, nn.Module] = {}

    @property
    def nfes(self) -> list[int]:
        return sorted(int(k) for k in self.spec["samplers"])

    def sample(self, seeds: Sequence[int], labels: Optional[Sequence[int]] = None, nfe: Optional[int] = None,
               batch_size: int = 256) -> torch.Tensor:
        """Images (N, *sample_shape) on the CPU, in the data range, one per seed."""
        key = str(nfe or self.spec["default_nfe"])
        if key not in self.spec["samplers"]:
            raise ValueError(f"this student samples with NFE {', '.join(map(str, self.nfes))}, not {key}")
        entry = self.spec["samplers"][key]
        if key not in self.nets:
            self.nets[key] = load_network(self.folder / entry["network"]).to(self.device)
        out = []
        for i in range(0, len(seeds), batch_size):
            eps = seed_noise(seeds[i:i + batch_size], self.spec["sample_shape"]).to(self.device)
            cond = None if labels is None else torch.as_tensor(labels[i:i + batch_size], device=self.device)
            out.append(apply_rule(entry["rule"], self.nets[key], eps, cond).float().cpu())
        return torch.cat(out) if out else torch.empty((0, *self.spec["sample_shape"]))
