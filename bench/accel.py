"""The GPU path's knobs, in one place: TF32, channels_last, gradient checkpointing, the fused
optimiser, ``torch.compile`` and a compiled (CUDA-graph) one-step sampler.

Every knob is a no-op or works unchanged on the CPU, so the same configs run everywhere.
``torch.compile`` is applied *in place* (``Module.compile``): parameter names and
``state_dict`` keys stay as they were, so checkpoints and saved students do not change.
``BENCH_COMPILE_BACKEND`` picks another dynamo backend (``eager``, ``aot_eager``): tests use it
to exercise the wiring without a C++ toolchain, and it helps to bisect compiler bugs.
"""
from __future__ import annotations

import os
import shutil
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from bench.errors import BenchError

FUSED_CHOICES = ("auto", "on", "off")


def compile_backend() -> str:
    return os.environ.get("BENCH_COMPILE_BACKEND", "inductor")


def check_compile(device: torch.device) -> None:
    """Fail early, in one line, where inductor cannot build CPU kernels (no C++ compiler)."""
    if compile_backend() == "inductor" and device.type == "cpu" and not (
            shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++") or shutil.which("clang++")):
        raise BenchError("compile on the CPU needs a C++ compiler (inductor builds C++ kernels) and none "
                         "was found; install g++ or set BENCH_COMPILE_BACKEND=eager, or drop compile")


def enable_tf32(device: torch.device, enabled: bool = True) -> None:
    """TF32 matmuls and convolutions on CUDA (fp32 work that autocast leaves, e.g. the loss)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def enable_grad_checkpointing(model: nn.Module) -> int:
    """Turn on diffusers' gradient checkpointing in every submodule that supports it.

    Returns how many modules were switched; a model with none (an MLP student) is an error,
    because silently training without it would blow the memory the user planned for.
    """
    switched = 0
    for m in model.modules():
        if getattr(m, "_supports_gradient_checkpointing", False) and hasattr(m, "enable_gradient_checkpointing"):
            m.enable_gradient_checkpointing()
            switched += 1
    if not switched:
        raise BenchError(f"grad_checkpointing needs a diffusers network, and this student "
                         f"({type(model).__name__}) has none; drop grad_checkpointing")
    return switched


def to_channels_last(modules: Iterable[nn.Module]) -> None:
    """Convolution weights in NHWC: convolutions then return NHWC too, so inputs need no change.
    It helps where cuDNN has fast NHWC kernels; measure it (`bench perf --channels-last both`)."""
    for m in modules:
        m.to(memory_format=torch.channels_last)


def use_fused(choice: str, device: torch.device) -> bool:
    """Fused (single-kernel) Adam: on for CUDA under ``auto``; ``on`` also works on the CPU."""
    if choice not in FUSED_CHOICES:
        raise BenchError(f"fused_optimizer must be one of {', '.join(FUSED_CHOICES)}, got {choice!r}")
    return choice == "on" or (choice == "auto" and device.type == "cuda")


def make_optimizer(name: str, params, lr: float, weight_decay: float, beta1: float,
                   fused: bool) -> torch.optim.Optimizer:
    opt_cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    # fused=None keeps torch's own default (foreach on CUDA) when not asked for
    return opt_cls(params, lr=lr, weight_decay=weight_decay, betas=(beta1, 0.999), fused=True if fused else None)


def compile_in_place(modules: Iterable[nn.Module], device: torch.device, mode: Optional[str] = None) -> None:
    """``Module.compile`` each module (names and state_dict keys unchanged).

    Compile a module only after any ``deepcopy`` of it (e.g. the EMA): a copy would share the
    compiled call of the original.
    """
    check_compile(device)
    for m in modules:
        m.compile(backend=compile_backend(), mode=mode if compile_backend() == "inductor" else None)


def compiled_sampler(module: Callable[..., torch.Tensor], device: torch.device) -> Callable[..., torch.Tensor]:
    """``module`` (a network, or any sampler function) compiled for inference: CUDA graphs
    (``reduce-overhead``) on CUDA, where a one-step sampler is launch-bound at small sizes;
    plain inductor on the CPU.

    CUDA-graph outputs live in a pool the next replay overwrites, so each output is cloned.
    """
    check_compile(device)
    backend = compile_backend()
    mode = ("reduce-overhead" if device.type == "cuda" else None) if backend == "inductor" else None
    fast = torch.compile(module, backend=backend, mode=mode)

    def call(*args, **kwargs) -> torch.Tensor:
        if device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        return fast(*args, **kwargs).clone()

    return call
