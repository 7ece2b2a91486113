"""Built-in teachers, all registered on one screen. Each entry is ``load(path, device) -> Teacher``.

``path`` is ``--teacher-path`` (a local folder of weights) where the teacher has weights.
"""
from __future__ import annotations

from typing import Optional

import torch

from bench.errors import BenchError
from bench.registry import TEACHERS
from bench.teachers.analytic import gmm2d_params, mixture_teacher, sample_mixture
from bench.teachers.base import Provenance, Teacher  # noqa: F401 (public API)

HUB_TEACHERS = {
    "cifar10": "google/ddpm-cifar10-32",
    "lsun_bedroom": "google/ddpm-ema-bedroom-256",
    "lsun_church": "google/ddpm-ema-church-256",
    "celebahq": "google/ddpm-ema-celebahq-256",
}
DATASET_SIZE = 20_000  # exact draws: the analytic teachers' data set (FID reference, training data)


def _analytic(name: str, means, stds, weights, path: Optional[str], conditional: bool = False) -> Teacher:
    if path:
        raise BenchError(f"teacher {name!r} is analytic and takes no --teacher-path; drop it")
    teacher = mixture_teacher(means, stds, weights, name=name, conditional=conditional)
    teacher.features = "points"
    # a fixed seed: the data set is part of the teacher's definition
    teacher.dataset = lambda: sample_mixture(means, stds, weights, DATASET_SIZE,
                                               torch.Generator().manual_seed(12345)).float()
    return teacher


@TEACHERS.register("gaussian", "exact teacher: 16-D Gaussian N(mu, diag(s^2)), linear DDPM schedule")
def gaussian(path: Optional[str] = None, device: str = "cpu") -> Teacher:
    d = torch.arange(16, dtype=torch.float64)
    mu, std = 0.5 * torch.sin(d), 0.1 + 0.3 * (d % 4) / 3
    return _analytic("gaussian", mu[None], std[None], torch.ones(1), path)


@TEACHERS.register("gmm2d", "exact teacher: 8 Gaussians on a circle in 2-D, linear DDPM schedule")
def gmm2d(path: Optional[str] = None, device: str = "cpu") -> Teacher:
    return _analytic("gmm2d", *gmm2d_params(), path)


@TEACHERS.register("gmm2d_cond", "exact teacher: gmm2d, class-conditional (class c = component c, label 8 = "
                                 "no class), for classifier-free guidance")
def gmm2d_cond(path: Optional[str] = None, device: str = "cpu") -> Teacher:
    return _analytic("gmm2d_cond", *gmm2d_params(), path, conditional=True)


def _shipped(name: str, path: Optional[str], device: str) -> Teacher:
    """A teacher whose weights ship in bench/assets/<name> (or --teacher-path), on the digits data."""
    from bench import __version__
    from bench.data import digits_split
    from bench.teachers.diffusers_teacher import load_unet_folder
    from bench.teachers.digits import ASSETS

    root = path or ASSETS / name
    source = str(path) if path else f"bench/assets/{name}"
    teacher = load_unet_folder(root, source, "" if path else f"distill-bench {__version__}",
                               name=name, device=device)
    teacher.features = "digits-cnn"
    teacher.dataset = lambda: digits_split("train")[0]
    teacher.dataset_labels = lambda: digits_split("train")[1]
    return teacher


@TEACHERS.register("digits", "embedded default: 0.7M-param UNet on sklearn's 8x8 digits (shipped)")
def digits(path: Optional[str] = None, device: str = "cpu") -> Teacher:
    return _shipped("digits", path, device)


@TEACHERS.register("digits_cond", "the digits UNet class-conditional (10 digits + no class, label "
                                  "dropout 0.1) for classifier-free guidance (shipped)")
def digits_cond(path: Optional[str] = None, device: str = "cpu") -> Teacher:
    return _shipped("digits_cond", path, device)


@TEACHERS.register("digits_eps", "the digits UNet as eps-prediction on DDPM's linear schedule, like "
                                 "the hub teachers (shipped)")
def digits_eps(path: Optional[str] = None, device: str = "cpu") -> Teacher:
    return _shipped("digits_eps", path, device)


TEXT_TEACHERS = {  # text-to-image latent teachers (bench/teachers/text.py)
    "sd15": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "Stable Diffusion 1.5, 512 px"),
    "sd21base": ("stabilityai/stable-diffusion-2-1-base", "Stable Diffusion 2.1-base, 512 px"),
}


def _register_text(name: str, hub_id: str, what: str) -> None:
    def load(path: Optional[str] = None, device: str = "cpu") -> Teacher:
        from pathlib import Path

        from bench.teachers.diffusers_teacher import resolve_hub_dir
        from bench.teachers.text import load_text_teacher

        if path:
            return load_text_teacher(Path(path), str(Path(path).resolve()), device=device)
        directory, revision = resolve_hub_dir(hub_id, name)
        return load_text_teacher(directory, hub_id, revision, device=device)

    TEACHERS.register(name, f"{what} via diffusers ({hub_id}): latent, text-conditional, prompts as classes")(load)


for _name, (_hub, _what) in TEXT_TEACHERS.items():
    _register_text(_name, _hub, _what)


def _register_hub(name: str, hub_id: str) -> None:
    def load(path: Optional[str] = None, device: str = "cpu") -> Teacher:
        from bench.teachers.diffusers_teacher import load_hub_teacher

        return load_hub_teacher(hub_id, name, path, device)

    TEACHERS.register(name, f"{hub_id} (diffusers; HF cache or --teacher-path)")(load)


for _name, _hub_id in HUB_TEACHERS.items():
    _register_hub(_name, _hub_id)


def load_teacher(name: str, path: Optional[str] = None, device: str = "cpu") -> Teacher:
    return TEACHERS.get(name)(path=path, device=device)
