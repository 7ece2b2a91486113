"""What ``bench perf`` measures on: teachers (registered, or hub architectures with random
weights) and the peak FLOP/s that model-FLOP utilisation is taken against.

The hub architectures are built from the google/ddpm-* UNet configs (DESIGN.md) without
downloading anything: weights do not change the cost of a forward or backward pass, so
throughput figures hold for the real checkpoints; every figure from them is labelled
``random weights``. Their schedule is the DDPM one (linear betas, eps-prediction).
"""
from __future__ import annotations

import statistics
import time
from typing import Optional

import torch

from bench.teachers.base import Provenance, Teacher
from perf.config import ARCH_NAMES

_DDPM_UNET = dict(in_channels=3, out_channels=3, layers_per_block=2, attention_head_dim=None,
                  norm_eps=1e-6, norm_num_groups=32, downsample_padding=0, flip_sin_to_cos=False,
                  freq_shift=1, center_input_sample=False, act_fn="silu",
                  time_embedding_type="positional", mid_block_scale_factor=1)
ARCHS = {
    # google/ddpm-cifar10-32: 35.7M parameters, 12.4 GFLOP per image forward (FlopCounterMode)
    "cifar10": dict(sample_size=32, block_out_channels=(128, 256, 256, 256),
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
    # google/ddpm-ema-bedroom-256: 113.7M parameters, 497 GFLOP per image forward
    "lsun_bedroom": dict(sample_size=256, block_out_channels=(128, 128, 256, 256, 512, 512),
                         down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4),
}
ARCHS["lsun_church"] = ARCHS["celebahq"] = ARCHS["lsun_bedroom"]  # the same 256px DDPM network
assert tuple(ARCHS) == ARCH_NAMES

# bf16 dense tensor-core peaks from the vendors' data sheets (SXM parts), in FLOP/s. The
# DESIGN.md anchor measured ~800 TFLOP/s of bf16 matmul on an H100: MFU is against the
# sheet, and ``perf/matmul_peak_tflops`` reports what this card reached.
PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
             "A10G": 70e12, "A10": 125e12}


def make_unet(arch: str, device: str | torch.device = "cpu"):
    """The hub architecture as a diffusers UNet2DModel with random weights."""
    from diffusers import UNet2DModel

    return UNet2DModel(**_DDPM_UNET, **ARCHS[arch]).to(device)


def random_teacher(arch: str, device: torch.device, seed: int = 0) -> Teacher:
    """A Teacher with the hub model's network and schedule and random weights."""
    from diffusers import DDPMScheduler

    from bench.teachers.diffusers_teacher import unet_teacher

    torch.manual_seed(seed)
    unet = make_unet(arch, device).eval().requires_grad_(False)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                              beta_schedule="linear", prediction_type="epsilon", clip_sample=True)
    return unet_teacher(unet, scheduler, Provenance(f"random-weights:{arch}", "", ""))


def load(teacher: Optional[str], arch: Optional[str], device: torch.device) -> tuple[Teacher, str]:
    """(teacher, label): a registered teacher by name, or a hub architecture with random weights."""
    if arch:
        return random_teacher(arch, device).to(device), f"{arch} (random weights)"
    from bench.teachers import load_teacher

    name = teacher or "digits"
    return load_teacher(name, device=str(device)).to(device), name


def forward_flops(teacher: Teacher, batch: int = 1) -> float:
    """FLOPs of one network forward at ``batch``, counted on the meta device (no compute)."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    if not any(True for _ in teacher.net.parameters()):
        return 0.0  # an exact teacher: closed-form arithmetic, not a network (nor meta-traceable)
    net = copy.deepcopy(teacher.net).to("meta")
    x = torch.empty((batch,) + teacher.sample_shape, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, torch.zeros(batch, device="meta"), None)
    return float(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, bf16: bool, repeats: int = 5) -> float:
    """Achieved FLOP/s of a square matmul (bf16 on CUDA, fp32 on the CPU): the measured ceiling."""
    n = 8192 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    inner = 20 if device.type == "cuda" else 3
    times = []
    for _ in range(repeats + 1):  # the first round warms up (cuBLAS heuristics, CPU caches)
        _sync(device)
        start = time.perf_counter()
        for _ in range(inner):
            a @ b
        _sync(device)
        times.append((time.perf_counter() - start) / inner)
    return 2 * n ** 3 / statistics.median(times[1:])


def peak_flops(device: torch.device, bf16: bool, override_tflops: Optional[float],
               measured: float) -> tuple[float, str]:
    """(peak FLOP/s, where it came from): the flag, the data sheet by device name, else measured."""
    if override_tflops:
        return override_tflops * 1e12, "flag --peak-tflops"
    if device.type == "cuda" and bf16:
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_BF16.items():
            if key in name:
                return value, f"{key} bf16 dense data sheet"
    kind = "bf16" if bf16 else "fp32"
    return measured, f"measured {kind} matmul on this device"
