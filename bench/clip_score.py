"""CLIP score of text-to-image samples (Hessel et al. 2021, as torchmetrics computes it):
100 * max(cos(E_I(image), E_T(prompt)), 0) per sample, with a local CLIP model (a transformers
``CLIPModel`` folder with its tokenizer, never downloaded at run time). Images in [-1, 1] are
mapped to [0, 1], resized to the vision tower's input size (bicubic; the samples are square,
so CLIP's resize-and-centre-crop is a resize) and normalised with CLIP's mean and std.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from bench.errors import BenchError, first_line

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's image normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_clip_model(path) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise BenchError(f"CLIP score needs a local CLIP model folder, and {path} holds none (no config.json); "
                         f"on a connected machine run `hf download openai/clip-vit-large-patch14 --local-dir DIR` "
                         f"and pass --clip-model DIR")
    return path


def clip_scorer(path, prompts: list[str], device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """score(images, labels) -> CLIP score of image i against prompt labels[i], per sample (CPU)."""
    from transformers import CLIPModel, CLIPTokenizer

    path = check_clip_model(path)
    try:
        model = CLIPModel.from_pretrained(path).eval().requires_grad_(False).to(device)
        tokenizer = CLIPTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot load the CLIP model in {path}: {first_line(exc, 200)}") from None
    with torch.no_grad():
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        text = model.text_projection(model.text_model(input_ids=ids).pooler_output)
        text = text / text.norm(dim=-1, keepdim=True)
    size = model.config.vision_config.image_size
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def score(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = ((images.to(device).float() + 1) / 2).clamp(0, 1)
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        e = model.visual_projection(model.vision_model(pixel_values=(x - mean) / std).pooler_output)
        e = e / e.norm(dim=-1, keepdim=True)
        return (100 * (e * text[labels.to(device)]).sum(-1)).clamp(min=0).double().cpu()

    return score
