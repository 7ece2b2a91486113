"""``RunConfig``: what one ``bench run`` does, declared once (flags, YAML keys and MLflow
params all come from these fields). Kept free of torch, so ``bench --help`` stays quick."""
from __future__ import annotations

import dataclasses
from typing import Optional

from bench.config import check_choices, option

METRIC_CHOICES = ("fid", "kid", "pr")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What one ``bench run`` does: method, teacher, evaluation settings, where it logs."""

    method: str = option("ddim", "distillation method (bench ls)")
    teacher: str = option("digits", "teacher model (bench ls)")
    teacher_path: Optional[str] = option(None, "local folder with the teacher's weights")
    nfe: Optional[tuple[int, ...]] = option(None, "numbers of function evaluations to evaluate "
                                                  "(default: the method's, e.g. 1,2,4,...,64 for ddim)")
    num_samples: int = option(1000, "samples per NFE for FID/KID (report n with every FID)")
    batch_size: int = option(250, "sampling batch size (results do not depend on it)")
    seed: int = option(0, "base seed: sample i uses noise seeded by (seed, i)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    metrics: tuple[str, ...] = option(METRIC_CHOICES, "metrics (pr: precision/recall)", choices=METRIC_CHOICES)
    reference: str = option("auto", "auto, data, teacher (its own DDIM samples), folder:PATH or stats:PATH.npz")
    reference_samples: int = option(2000, "n of a data-free (teacher) reference")
    reference_steps: int = option(64, "DDIM steps of a data-free (teacher) reference")
    inception_weights: Optional[str] = option(None, "local weights-inception-2015-12-05-6726825d.pth")
    fidelity_steps: int = option(64, "teacher fidelity: MSE/PSNR against the teacher's DDIM with "
                                     "this many steps from the same noise (0: off)")
    fidelity_samples: int = option(1000, "teacher fidelity is measured on the first N seeds")
    keep_samples: int = option(10_000, "samples kept per NFE for the samples/*.npz artifact")
    experiment: str = option("distill-bench", "MLflow experiment name")
    tracking_uri: Optional[str] = option(None, "MLflow tracking URI (default: sqlite in the cwd)")

    def __post_init__(self):
        if self.nfe is not None and (not self.nfe or min(self.nfe) < 1):
            raise ValueError(f"every NFE must be >= 1, got {','.join(map(str, self.nfe)) or 'none'}")
        if self.num_samples < 2 or self.batch_size < 1:
            raise ValueError("num_samples must be >= 2 and batch_size >= 1")
        check_choices(self)
