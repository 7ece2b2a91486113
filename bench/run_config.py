"""``RunConfig``: what one ``bench run`` does, declared once (flags, YAML keys and MLflow
params all come from these fields). Kept free of torch, so ``bench --help`` stays quick.

Fields marked ``eval_only`` change how a trained student is evaluated, not how it is trained:
``bench run --resume RUN_ID`` with only those changed evaluates that run's student in a new run.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from bench.config import check_choices, option

METRIC_CHOICES = ("fid", "kid", "pr")
REFERENCE_KINDS = ("auto", "data", "teacher", "folder", "stats")
SEED_LIMIT = 2**32  # seeds seed torch, numpy and Ray alike: 32 bits fit them all
LOWEST = {"reference_samples": 2, "reference_steps": 1, "fidelity_steps": 0, "fidelity_samples": 0,
          "keep_samples": 0}


def _eval(default, help: str, **kwargs):
    """An evaluation-only field (see the module docstring)."""
    return option(default, help, eval_only=True, **kwargs)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What one ``bench run`` does: method, teacher, evaluation settings, where it logs."""

    method: str = option("ddim", "distillation method (bench ls)")
    teacher: str = option("digits", "teacher model (bench ls)")
    teacher_path: Optional[str] = option(None, "local folder with the teacher's weights")
    guidance_scale: float = option(1.0, "classifier-free guidance w of a class-conditional teacher: "
                                        "out_u + w (out_c - out_u) on its output, in every sampler "
                                        "and distillation target; a guided row costs two forwards")
    prompts: Optional[str] = option(None, "text-to-image teachers: a file of prompts, one per line; sample i "
                                          "takes prompt i mod n (default: bench/assets/prompts.txt)")
    features: Optional[str] = _eval(None, "feature extractor for FID/KID (bench ls; default: the teacher's)")
    clip_model: Optional[str] = _eval(None, "text-to-image runs: a local CLIP model folder (transformers "
                                            "CLIPModel + tokenizer) for clip_score")
    nfe: Optional[tuple[int, ...]] = _eval(None, "numbers of function evaluations to evaluate "
                                                 "(default: the method's, e.g. 1,2,4,...,64 for ddim)")
    num_samples: int = _eval(1000, "samples per NFE for FID/KID (report n with every FID)")
    batch_size: int = _eval(250, "sampling batch size (results do not depend on it)")
    seed: int = option(0, "base seed: sample i uses noise seeded by (seed, i)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    metrics: tuple[str, ...] = _eval(METRIC_CHOICES, "metrics (pr: precision/recall)", choices=METRIC_CHOICES)
    reference: str = _eval("auto", "auto, data, teacher (its own DDIM samples), folder:PATH or stats:PATH.npz")
    reference_samples: int = _eval(2000, "n of a data-free (teacher) reference")
    reference_steps: int = _eval(64, "DDIM steps of a data-free (teacher) reference")
    inception_weights: Optional[str] = _eval(None, "local weights-inception-2015-12-05-6726825d.pth")
    fidelity_steps: int = _eval(64, "teacher fidelity: MSE/PSNR against the teacher's DDIM with "
                                    "this many steps from the same noise (0: off)")
    fidelity_samples: int = _eval(1000, "teacher fidelity is measured on the first N seeds")
    keep_samples: int = _eval(10_000, "samples kept per NFE for the samples/*.npz artifact")
    workers: int = option(1, "data-parallel training workers on Ray Train (bench/parallel.py); the global "
                             "batch stays batch_size, split over them")
    gpus_per_worker: float = option(0.0, "GPUs per worker (0: CPU workers with gloo; else NCCL)")
    cpus_per_worker: float = option(1.0, "CPUs Ray reserves per worker (its torch threads: the whole part)")
    address: Optional[str] = option(None, "an existing Ray cluster for the workers (e.g. 10.0.0.1:6379; "
                                          "default: a local Ray)")
    worker_retries: int = option(0, "restarts of the workers after one dies (Ray Train's FailureConfig), "
                                    "each from the newest checkpoint; 0: the run fails and --resume continues it")
    experiment: str = option("distill-bench", "MLflow experiment name")
    tracking_uri: Optional[str] = option(None, "MLflow tracking URI (default: sqlite in the cwd)")
    system_metrics: bool = option(True, "log MLflow system metrics (CPU, memory; GPU where pynvml is "
                                        "installed) every 10 s; --no-system-metrics: off")
    register: Optional[str] = option(None, "register the trained student in MLflow's model registry "
                                           "under this name")

    def __post_init__(self):
        check_choices(self)  # types first: the checks below compare numbers
        if self.nfe is not None and (not self.nfe or min(self.nfe) < 1):
            raise ValueError(f"every NFE must be >= 1, got {','.join(map(str, self.nfe)) or 'none'}")
        if self.workers < 1 or min(self.gpus_per_worker, self.worker_retries) < 0 or self.cpus_per_worker <= 0:
            raise ValueError(f"workers must be >= 1, gpus_per_worker and worker_retries >= 0 and "
                             f"cpus_per_worker > 0, got {self.workers}, {self.gpus_per_worker}, "
                             f"{self.worker_retries} and {self.cpus_per_worker}")
        if self.num_samples < 2 or self.batch_size < 1:
            raise ValueError("num_samples must be >= 2 and batch_size >= 1")
        if not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"seed must be in 0..{SEED_LIMIT - 1}, got {self.seed}")
        for name, low in LOWEST.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        for f in dataclasses.fields(self):  # argparse reads a lone "--" as the end of options
            if getattr(self, f.name) == "--":
                raise ValueError(f"{f.name} cannot be '--' (the command line reads it as the end of "
                                 f"options); for a file of that name write ./--")
        if not self.experiment.strip():
            raise ValueError("experiment must be a non-empty name")
        kind, sep, arg = self.reference.partition(":")
        if kind not in REFERENCE_KINDS or bool(sep) != (kind in ("folder", "stats")) or (sep and not arg):
            raise ValueError(f"unknown reference {self.reference[:80]!r}; use auto, data, teacher, "
                             f"folder:PATH or stats:PATH.npz")
