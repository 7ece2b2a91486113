"""Adapter for diffusers UNet2DModel teachers: the hub ones and the shipped ``digits``.

One loading path for all: a hub id is first resolved to a directory in the local Hugging
Face cache (never the network: weights cannot be fetched on our machines, and a missing
model must fail in well under a second with an actionable message), then the directory is
loaded. Both layouts are accepted: a pipeline folder with ``unet/`` and ``scheduler/``
(``DDPMPipeline.save_pretrained``) and the flat layout of the google/ddpm-* repos.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

from bench.errors import BenchError, first_line
from bench.files import sha256_of
from bench.schedule import NoiseSchedule
from bench.teachers.base import Provenance, Teacher

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def resolve_hub_dir(hub_id: str, name: str) -> tuple[Path, str]:
    """(snapshot directory, revision) of ``hub_id`` in the local HF cache, or a BenchError."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        directory = Path(snapshot_download(hub_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        raise BenchError(
            f"teacher {name!r} needs {hub_id}, which is not in the local Hugging Face cache; "
            f"on a connected machine run `hf download {hub_id}` and copy the cache here "
            f"(HF_HOME), or download the folder and pass --teacher-path DIR"
        ) from None
    return directory, directory.name


def _component_dir(root: Path, sub: str) -> Path:
    return root / sub if (root / sub).is_dir() else root


def load_unet_folder(root: Path, provenance_source: str, revision: str = "",
                     name: str = "teacher", device: str = "cpu") -> Teacher:
    """Load a diffusers UNet2DModel + DDPM-style scheduler folder as a Teacher."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise BenchError(f"teacher path {root} is a file; --teacher-path takes the folder that holds "
                         f"unet/ and scheduler/ (or config.json and the weights)")
    if not root.is_dir():
        raise BenchError(f"teacher folder {root} does not exist; pass an existing --teacher-path")
    unet_dir = _component_dir(root, "unet")
    weights = next((unet_dir / f for f in WEIGHT_FILES if (unet_dir / f).is_file()), None)
    if weights is None or not (unet_dir / "config.json").is_file():
        raise BenchError(f"{unet_dir} holds no diffusers UNet (config.json + {WEIGHT_FILES[0]}); "
                         f"save one with UNet2DModel.save_pretrained or pass another --teacher-path")
    scheduler_dir = _component_dir(root, "scheduler")
    _check_json(unet_dir / "config.json", "the UNet's config")
    _check_json(scheduler_dir / "scheduler_config.json", "the noise schedule's config")
    from diffusers import DDPMScheduler, UNet2DModel

    logging.getLogger("diffusers").setLevel(logging.ERROR)
    try:  # diffusers reads .bin weights with torch.load(weights_only=True): no code runs from them
        unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=weights.suffix == ".safetensors")
        unet = unet.eval().requires_grad_(False).to(device)
    except (OSError, RuntimeError, ValueError) as exc:
        raise BenchError(f"cannot load the UNet in {unet_dir}: {_load_failure(exc)}; "
                         f"pass a folder saved by UNet2DModel.save_pretrained") from None
    try:
        scheduler = DDPMScheduler.from_pretrained(scheduler_dir)
    except (OSError, ValueError, TypeError) as exc:
        raise BenchError(f"cannot load the noise schedule in {scheduler_dir}: {first_line(exc, 200)}") from None
    return unet_teacher(unet, scheduler, Provenance(provenance_source, revision, sha256_of(weights)))


def _check_json(path: Path, what: str) -> None:
    """A missing or broken JSON config is that file's fault, not the weights' (diffusers
    reports both alike)."""
    import json

    if not path.is_file():
        raise BenchError(f"{path} ({what}) is missing; pass a folder saved by diffusers' save_pretrained")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"{path} ({what}) is not valid JSON ({first_line(exc, 120)}); restore it from "
                         f"the model's source") from None
    if not isinstance(config, dict):
        raise BenchError(f"{path} ({what}) must hold a JSON object, got {type(config).__name__}")


class _UNetNet(torch.nn.Module):
    """Calls UNet2DModel with (x_t, t, class labels) and returns its raw prediction."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        embeds = self.unet.config.get("num_class_embeds")
        if cond is None and embeds:  # a class-embedding UNet must get labels: the last one is "no class"
            cond = torch.full((len(x_t),), embeds - 1, dtype=torch.long, device=x_t.device)
        return self.unet(x_t, t, class_labels=cond).sample


def _load_failure(exc: BaseException) -> str:
    """One line out of diffusers' multi-line load errors: the first size mismatch, else the
    innermost cause (e.g. safetensors' header error for a truncated or corrupt file)."""
    text = str(exc)
    mismatch = next((line.strip() for line in text.splitlines() if "size mismatch" in line), None)
    if mismatch:
        return f"the weights do not fit its config.json ({mismatch[:240]})"
    while exc.__cause__ or exc.__context__:
        exc = exc.__cause__ or exc.__context__
    return f"the weights file is unreadable ({type(exc).__name__}: {first_line(exc, 200)})"


def unet_teacher(unet, scheduler, provenance: Provenance,
                 num_classes: Optional[int] = None) -> Teacher:
    """The Teacher of a diffusers UNet2DModel and its DDPM-style scheduler. A UNet with
    ``num_class_embeds`` = K + 1 (and no other class-embedding type) is read as K classes plus
    the "no class" label K of classifier-free guidance, as ``bench teacher train digits_cond``
    trains it."""
    cfg = scheduler.config
    embeds = unet.config.get("num_class_embeds")
    if num_classes is None and embeds and unet.config.get("class_embed_type") is None:
        num_classes = embeds - 1
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    return Teacher(
        _UNetNet(unet),
        NoiseSchedule.from_diffusers(scheduler),
        prediction_type=cfg.get("prediction_type", "epsilon"),
        sample_shape=shape,
        provenance=provenance,
        clip_x0=bool(cfg.get("clip_sample", True)),
        data_range=(-float(cfg.get("clip_sample_range", 1.0)), float(cfg.get("clip_sample_range", 1.0))),
        num_classes=num_classes,
        scheduler_config=dict(cfg),
    )


def load_hub_teacher(hub_id: str, name: str, path: Optional[str], device: str) -> Teacher:
    if path:
        return load_unet_folder(Path(path), str(Path(path).resolve()), name=name, device=device)
    directory, revision = resolve_hub_dir(hub_id, name)
    return load_unet_folder(directory, hub_id, revision, name=name, device=device)
