"""The fields every trained method's config shares (the shared loop's settings); re-exported by
``bench.train``, where methods import it from."""
from __future__ import annotations

import dataclasses

from bench.config import check_choices, option


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Fields every trained method shares (a method's config subclasses this)."""

    iterations: int = option(2000, "optimiser steps")
    batch_size: int = option(64, "samples per step (64 keeps a digits step ~0.16 s on 2 CPU cores)")
    lr: float = option(1e-4, "peak learning rate (1e-4: students start from the teacher's weights)")
    optimizer: str = option("adam", "optimiser", choices=("adam", "adamw"))
    weight_decay: float = option(0.0, "decoupled weight decay (adamw)")
    adam_beta1: float = option(0.9, "Adam's beta1 (SiD uses 0)")
    warmup: int = option(50, "linear learning-rate warm-up steps (then constant)")
    grad_clip: float = option(1.0, "clip the gradient norm to this (0: off); loss weights such as "
                                   "BOOT's 1/(1-r)^2 make raw gradients spiky")
    ema_decay: float = option(0.999, "EMA of the student used for evaluation (0: off), with the "
                                     "usual warm-up min(decay, (1+step)/(10+step))")
    precision: str = option("auto", "student precision: auto (bf16 autocast on CUDA, fp32 on CPU), "
                                    "fp32 or bf16", choices=("auto", "fp32", "bf16"))
    teacher_precision: str = option("fp32", "the frozen teacher inside training steps: fp32 (targets as "
                                            "exact as the fp32 evaluation; an eps-teacher's x0 multiplies "
                                            "its output error by sigma/alpha) or autocast (the student's)",
                                    choices=("fp32", "autocast"))
    micro_batches: int = option(1, "split each step's batch into this many micro-batches, each from its own "
                                   "random stream, and accumulate their gradients: less memory, the same "
                                   "global batch (bench/streams.py; two workers = two micro-batches)")
    log_every: int = option(10, "log train/* metrics every N steps")
    eval_every: int = option(0, "quick FID of the student every N steps (0: off)")
    eval_samples: int = option(256, "n of the quick evaluation (raised to the feature dimension if smaller)")
    checkpoint_every: int = option(250, "save a checkpoint every N steps and at the end (0: off); "
                                         "a killed run resumes from the newest (bench run --resume)")
    keep_checkpoints: int = option(2, "newest checkpoints kept per run (older ones are deleted)")
    compile: bool = option(False, "torch.compile the student (and a frozen teacher) for training and "
                                  "one-step sampling; the first steps pay the compile time")
    channels_last: bool = option(False, "NHWC convolution weights (faster on some GPUs, slower on others: "
                                        "measure with bench perf --channels-last both)")
    grad_checkpointing: bool = option(False, "recompute activations in the backward pass (diffusers UNet "
                                             "students): less memory for large teachers, ~15-25% slower")
    fused_optimizer: str = option("auto", "fused Adam kernel (auto: on CUDA)", choices=("auto", "on", "off"))
    tf32: bool = option(True, "TF32 matmuls/convolutions on CUDA for what autocast leaves in fp32")

    def __post_init__(self):
        check_choices(self)
        if self.iterations < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("iterations >= 0, batch_size >= 1 and lr > 0 are required")
        if not 0 <= self.adam_beta1 < 1:
            raise ValueError("adam_beta1 must be in [0, 1)")
        if not 0 <= self.ema_decay < 1:
            raise ValueError("ema_decay must be in [0, 1)")
        if self.micro_batches < 1 or self.batch_size % self.micro_batches:
            raise ValueError(f"micro_batches must be >= 1 and divide batch_size {self.batch_size}, "
                             f"got {self.micro_batches}")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 1:
            raise ValueError("checkpoint_every must be >= 0 and keep_checkpoints >= 1")
        # each of these would fail only mid-training (log_every=0 is a modulo by zero)
        for name, low in (("log_every", 1), ("warmup", 0), ("eval_every", 0), ("eval_samples", 2),
                          ("grad_clip", 0), ("weight_decay", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
