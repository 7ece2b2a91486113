"""Text-to-image latent teachers: Stable-Diffusion-style diffusers folders behind the one contract.

A folder with ``unet/`` (UNet2DConditionModel), ``vae/`` (AutoencoderKL), ``text_encoder/`` (a
CLIP text model), ``tokenizer/`` and ``scheduler/`` (as ``StableDiffusionPipeline.save_pretrained``
writes it, and as the hub repos hold it) loads as a Teacher in latent space. Its prompts are its
classes: the text encoder's states of prompt c are class c's condition, the empty prompt's are
"no class" (label K, the unconditional branch), so per-sample labels, classifier-free guidance,
students and their shipping work for text as they do for class labels. Sample i takes prompt
i mod n (bench.evaluator's labels). Methods work on latents; the evaluator decodes every sample
with the VAE (``Teacher.text.decode``) before features and grids. Weights come from the local
Hugging Face cache or ``--teacher-path``, never from the network.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Callable, Optional

import torch

from bench.errors import BenchError, first_line
from bench.files import sha256_of
from bench.portable import PromptUNet
from bench.schedule import NoiseSchedule
from bench.teachers.base import Provenance, Teacher

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
DEFAULT_PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "prompts.txt"
DECODE_BATCH = 16  # latents decoded at once: the VAE's activations dominate memory at 512 px


def read_prompts(path) -> list[str]:
    """The non-empty lines of a prompts file, or a BenchError saying what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"prompts file {path} does not exist; pass --prompts FILE with one prompt per line")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise BenchError(f"prompts file {path} holds no prompt; write one prompt per line")
    return prompts


@dataclasses.dataclass
class TextToImage:
    """What a text-to-image teacher adds to the contract: its prompts, their encoder, and the
    VAE that turns latents into images of ``image_shape`` (C, H, W) in [-1, 1]."""

    prompts: list[str]
    encode: Callable[[list[str]], torch.Tensor]  # prompts -> text states (n, L, D)
    vae: torch.nn.Module
    image_shape: tuple[int, ...]

    def context(self) -> torch.Tensor:
        """The states of the prompts and, last, of the empty prompt ("no class")."""
        return self.encode([*self.prompts, ""])

    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.prompts).encode()).hexdigest()[:16]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] of latents x0 (Stable Diffusion's VAE reads latents / scaling_factor)."""
        scale = float(self.vae.config.get("scaling_factor", 0.18215))
        out = [self.vae.decode(z.to(self.vae.dtype) / scale).sample.float().clamp(-1, 1)
               for z in latents.split(DECODE_BATCH)]
        return torch.cat(out)


def use_prompts(teacher: Teacher, prompts: list[str]) -> Teacher:
    """The teacher conditioned on ``prompts`` (its classes); a BenchError for other teachers."""
    if teacher.text is None:
        raise BenchError("--prompts needs a text-to-image teacher (sd15, sd21base); this one takes none")
    teacher.text.prompts = list(prompts)
    teacher.net.context = teacher.text.context().to(teacher.net.context.device)
    teacher.num_classes = len(prompts)
    return teacher


def _clip_encoder(text_encoder, tokenizer) -> Callable[[list[str]], torch.Tensor]:
    @torch.no_grad()
    def encode(prompts: list[str]) -> torch.Tensor:
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        return text_encoder(ids.to(text_encoder.device))[0].float()

    return encode


def _check_folder(root: Path) -> None:
    if not root.is_dir():
        raise BenchError(f"teacher folder {root} does not exist; pass an existing --teacher-path")
    missing = [c for c in COMPONENTS if not (root / c).is_dir()]
    if missing:
        raise BenchError(f"{root} lacks {', '.join(m + '/' for m in missing)}; a text-to-image teacher is a folder saved by "
                         f"StableDiffusionPipeline.save_pretrained (unet, vae, text_encoder, tokenizer, scheduler)")


def load_text_teacher(root: Path, source: str, revision: str = "", device: str = "cpu",
                      prompts: Optional[list[str]] = None) -> Teacher:
    """A Stable-Diffusion-style folder as a latent Teacher (module docstring)."""
    root = Path(root)
    _check_folder(root)
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from transformers.utils import logging as hf_logging

    logging.getLogger("diffusers").setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()  # one line per run, not a bar per component
    hf_logging.set_verbosity_error()
    try:
        unet = UNet2DConditionModel.from_pretrained(root / "unet").eval().requires_grad_(False).to(device)
        vae = AutoencoderKL.from_pretrained(root / "vae").eval().requires_grad_(False).to(device)
        encoder = CLIPTextModel.from_pretrained(root / "text_encoder").eval().requires_grad_(False).to(device)
        tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
        scheduler = DDPMScheduler.from_pretrained(root / "scheduler")  # SD's PNDM config: the same betas
    except (OSError, RuntimeError, ValueError) as exc:
        raise BenchError(f"cannot load the text-to-image teacher in {root}: {first_line(exc, 200)}") from None
    text = TextToImage(prompts or read_prompts(DEFAULT_PROMPTS), _clip_encoder(encoder, tokenizer), vae, ())
    f, size = 2 ** (len(vae.config.block_out_channels) - 1), unet.config.sample_size
    text.image_shape = (vae.config.out_channels, size * f, size * f)
    weights = next(p for p in (root / "unet").iterdir() if p.name.startswith("diffusion_pytorch_model"))
    cfg = scheduler.config
    return Teacher(PromptUNet(unet, text.context()), NoiseSchedule.from_diffusers(scheduler),
                   prediction_type=cfg.get("prediction_type", "epsilon"),
                   sample_shape=(unet.config.in_channels, size, size),
                   provenance=Provenance(source, revision, sha256_of(weights)),
                   clip_x0=False,  # latents have no fixed range; SD's schedulers do not clip them
                   num_classes=len(text.prompts), scheduler_config=dict(cfg), text=text)
