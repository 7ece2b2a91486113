"""``PerfConfig``: what ``bench perf`` measures; its fields are the command's flags (kept free of
torch, so building the parser stays quick)."""
from __future__ import annotations

import dataclasses
from typing import Optional

from bench.config import check_choices, option

SECTIONS = ("train", "sample", "eval")
OPT_IN = ("scale",)  # starts Ray: asked for by name
ARCH_NAMES = ("cifar10", "lsun_bedroom", "lsun_church", "celebahq")
ARMS = ("off", "on", "both")

# (metric, comparison, bound, applies to): the harness's speed targets, shown beside the figures
TARGETS = [
    ("logging_overhead_fraction", "<", 0.02, "cpu"),
    ("sample_ratio_1step_vs_ddim50", ">=", 40, "cpu"),
    ("reference_cache_speedup", ">=", 5, "cpu"),
    ("boot_train_mfu", ">=", 0.25, "H100"),
    ("boot_train_images_per_second", ">=", 3300, "H100 cifar10"),
    ("boot_train_images_per_second", ">=", 80, "H100 lsun_bedroom"),
    ("boot_train_peak_memory_gb", "<=", 40, "H100 lsun_bedroom"),
    ("sample_images_per_second_boot_1step_compiled", ">=", 20000, "H100 cifar10"),
]


@dataclasses.dataclass(frozen=True)
class PerfConfig:
    """What ``bench perf`` measures and how long it measures it."""

    teacher: Optional[str] = option(None, "registered teacher (default digits)")
    arch: Optional[str] = option(None, "hub architecture with random weights (throughput only)",
                                 choices=ARCH_NAMES)
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    sections: tuple[str, ...] = option(SECTIONS, "what to measure (scale: images/s on 1, 2, ... Ray Train "
                                                 "workers, the first trained method)", choices=SECTIONS + OPT_IN)
    methods: tuple[str, ...] = option(("boot", "progressive"), "methods to time (registered names); "
                                      "training for those that train, sampling at their NFEs among --nfe")
    batch_size: int = option(64, "training batch size")
    steps: int = option(10, "training steps per timed block")
    blocks: int = option(3, "timed blocks per arm (median over blocks)")
    warmup: int = option(3, "untimed training steps first (compile, autotuning)")
    precision: str = option("auto", "auto (bf16 on CUDA), fp32 or bf16", choices=("auto", "fp32", "bf16"))
    compile: str = option("off", "torch.compile the one-step samplers, or training as well",
                          choices=("off", "sampler", "all"))
    channels_last: str = option("off", "both: the first method's training measured each way", choices=ARMS)
    grad_checkpointing: str = option("off", "gradient checkpointing in training; both: measured each way",
                                     choices=ARMS)
    sample_batch_size: int = option(250, "sampling batch size")
    nfe: tuple[int, ...] = option((1, 2, 4, 8, 50), "step counts to time (the teacher's DDIM at each)")
    repeats: int = option(5, "timed sampling repeats")
    eval_samples: int = option(1000, "n of the timed evaluations (digits teacher)")
    reference_samples: int = option(1000, "n of the data-free reference built by the first evaluation")
    reference_steps: int = option(64, "DDIM steps of that reference")
    log_every: int = option(10, "logged arm: MLflow calls every N steps, as in a run (TrainConfig.log_every)")
    workers: tuple[int, ...] = option((1, 2), "worker counts of the scale section (1 first: the base of "
                                              "the efficiency)")
    gpus_per_worker: float = option(0.0, "GPUs per worker in the scale section (0: CPU workers, gloo)")
    peak_tflops: Optional[float] = option(None, "peak for MFU (default: data sheet by GPU name, else measured)")

    def __post_init__(self):
        check_choices(self)
        if self.teacher and self.arch:
            raise ValueError("give --teacher or --arch, not both")
        if min(self.batch_size, self.steps, self.blocks, self.sample_batch_size, self.repeats) < 1:
            raise ValueError("batch sizes, --steps, --blocks and --repeats must be >= 1")
        if not self.workers or min(self.workers) < 1:
            raise ValueError("--workers needs worker counts >= 1")
        if not self.methods:
            raise ValueError("--methods needs at least one method")

    def uses_bf16(self, device) -> bool:
        return self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda")
