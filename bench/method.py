"""The method contract: a typed config, an optional distillation loop, samplers keyed by NFE.

The core (run, evaluator, tracking) only ever talks to this interface, so adding a method
means adding one file under ``methods/`` with ``@METHODS.register("name")``; nothing else
in the code base branches on a method's name (cf. NVlabs/edm ``training/loss.py``).
"""
from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import torch

from bench.errors import BenchError
from bench.sampling import Sampler
from bench.teachers.base import Teacher

LogFn = Callable[[dict[str, float], int], None]
"""log(metrics, step): how a method reports training curves (MLflow in a run)."""

DEFAULT_NFE = (1, 2, 4, 8, 16, 32, 64)


@dataclasses.dataclass
class DistillContext:
    """What the run hands a method's ``distill``: logging, quick evaluation, a work folder."""

    log: LogFn
    device: torch.device
    seed: int = 0
    workdir: Path = Path("checkpoints")
    progress: bool = True
    quick_eval: Optional[Callable[[Sampler, int], float]] = None  # (sampler, n) -> FID
    step_offset: int = 0  # global step of the trainer's step 0: progressive rounds continue one axis


@dataclasses.dataclass(frozen=True)
class NoConfig:
    """A method without options."""


class Method(abc.ABC):
    """Base class. Subclasses set ``Config`` and implement ``sampler``; trainers override
    ``distill`` and return its cost (wall-clock, teacher forward passes per sample, ...)."""

    Config: ClassVar[type] = NoConfig

    def __init__(self, teacher: Teacher, config: Any, device: torch.device):
        self.teacher = teacher
        self.config = config
        self.device = device

    def distill(self, ctx: DistillContext) -> dict[str, float]:
        """Train the student; returns cost metrics. Training-free methods return {}."""
        return {}

    def default_nfe(self) -> tuple[int, ...]:
        """The step counts a run evaluates when --nfe is not given."""
        return tuple(k for k in DEFAULT_NFE if k <= self.max_nfe())

    def save_artifacts(self, out_dir: Path) -> None:
        """Write what the run should keep (e.g. the student's weights). Default: nothing."""

    def max_nfe(self) -> int:
        """The largest number of function evaluations a sampler of this method can use."""
        return self.teacher.T

    def check_nfe(self, nfe: int) -> None:
        if not 1 <= nfe <= self.max_nfe():
            raise BenchError(f"NFE {nfe} is outside 1..{self.max_nfe()} for {type(self).__name__} "
                             f"on a teacher with {self.teacher.T} steps; choose --nfe within that range")

    @abc.abstractmethod
    def sampler(self, nfe: int) -> Sampler:
        """A deterministic map noise -> samples that uses ``nfe`` network evaluations."""
