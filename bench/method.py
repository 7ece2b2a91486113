"""The method contract: a typed config, an optional distillation loop, samplers keyed by NFE.

The core (run, evaluator, tracking, the training loop) only ever talks to this interface, so
adding a method means adding one file under ``methods/`` with ``@METHODS.register("name")``;
nothing else in the code base branches on a method's name (cf. NVlabs/edm ``training/loss.py``).
"""
from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import nn

from bench.errors import BenchError
from bench.sampling import Sampler
from bench.teachers.base import Teacher

LogFn = Callable[[dict[str, float], int], None]
"""log(metrics, step): how training reports its curves (MLflow in a run)."""

LossFn = Callable[..., tuple[torch.Tensor, float]]
"""loss(step, generator, rows=None) -> (per-sample losses, teacher forward passes per sample):
one batch of ``rows`` rows (None: the config's batch_size). The loop reduces the losses (cf.
EDM's loss classes); every random draw comes from the generator. The loop asks for fewer rows
than batch_size when a step's batch is split into streams (micro-batches, data-parallel
workers), each with its own generator: the losses must be per sample, with no batch statistics."""

DEFAULT_NFE = (1, 2, 4, 8, 16, 32, 64)


@dataclasses.dataclass
class DistillContext:
    """What ``run()`` hands a method's ``distill``: logging, quick evaluation, a work folder, and
    where training continues from (a resumed run's newest checkpoint), which is not a method
    hyperparameter."""

    log: LogFn
    device: torch.device
    seed: int = 0
    workdir: Path = Path("checkpoints")
    progress: bool = True
    quick_eval: Optional[Callable[[Sampler, int], float]] = None  # (sampler, n) -> FID
    resume_from: Optional[Path] = None
    # '' if the frozen teacher's output is finite, else what is not: a non-finite loss is then
    # the teacher's fault, not a divergence (a lower lr would not help)
    teacher_fault: Optional[Callable[[], str]] = None
    # data-parallel training (bench/streams.py): this process's rank among ``world`` workers;
    # only rank 0 logs, evaluates and writes checkpoints
    rank: int = 0
    world: int = 1


@dataclasses.dataclass
class Part:
    """A network trained beside a stage's model, by its own optimiser (DMD2's and SiD's fake
    score): ``updates`` optimiser steps of ``loss`` before every step of the model (DMD2's
    two-time-scale rule: 5). ``loss`` has the LossFn contract; the part gets the stage's
    optimiser settings at learning rate ``lr``, no EMA, and the same clipping, divergence
    checks and checkpointing as the model; its loss is logged as ``train/loss_<name>``."""

    name: str
    model: nn.Module
    loss: LossFn
    lr: float
    updates: int = 1


@dataclasses.dataclass
class TrainStage:
    """One stage of a method's training, as the shared loop (``bench.train.Trainer``) runs it.

    ``model`` is what the optimiser trains; ``loss`` draws a batch and returns its per-sample
    losses and teacher forward passes; ``frozen`` networks (the teacher) get the same device
    treatment as the model (channels_last, compile); ``quick_sampler`` turns a copy of the
    model (its EMA) into a sampler for the periodic quick FID; ``parts``: further networks the
    stage trains (see Part): one step of the stage is their updates, then one step of the model."""

    model: nn.Module
    loss: LossFn
    config: Any  # a bench.train.TrainConfig (or subclass)
    frozen: tuple[nn.Module, ...] = ()
    quick_sampler: Optional[Callable[[nn.Module], Sampler]] = None
    parts: tuple[Part, ...] = ()


@dataclasses.dataclass(frozen=True)
class Distilled:
    """One sampler of a trained student, self-contained: the network it calls and the rule
    around it, a JSON mapping that ``bench.portable.apply_rule`` runs (``one_step``, ``ddim``, ``consistency``).
    What ships in the run's MLflow model and ``bench export``, so it must reproduce
    ``Method.sampler(nfe)`` exactly, without the method's code."""

    network: nn.Module
    rule: dict


@dataclasses.dataclass(frozen=True)
class NoConfig:
    """A method without options."""


class Method(abc.ABC):
    """Base class. Subclasses set ``Config`` and implement ``sampler``; trainers override
    ``distill`` (returning its cost: seconds, teacher forward passes, ...) and ``training_stage``."""

    Config: ClassVar[type] = NoConfig
    # why this method refuses class-conditional teachers ('': it takes them, drawing labels for
    # its training rows and passing the evaluator's labels to its samplers)
    no_conditions: ClassVar[str] = ""

    def __init__(self, teacher: Teacher, config: Any, device: torch.device):
        if teacher.num_classes and self.no_conditions:
            raise BenchError(self.no_conditions)
        self.teacher = teacher
        self.config = config
        self.device = device

    def distill(self, ctx: DistillContext) -> dict[str, float]:
        """Train the student; returns cost metrics. Training-free methods return {}."""
        return {}

    def training_stage(self) -> Optional[TrainStage]:
        """A stage whose optimiser steps cost what ``distill``'s do, for throughput and FLOP
        figures (``bench perf``); None for training-free methods."""
        return None

    def variant(self) -> str:
        """What tells this run apart within its method where reports list methods (a solver's
        scheduler): runs are labelled ``method:variant``; '' for none."""
        return ""

    def default_nfe(self) -> tuple[int, ...]:
        """The step counts a run evaluates when --nfe is not given."""
        return tuple(k for k in DEFAULT_NFE if k <= self.max_nfe())

    def distilled(self) -> dict[int, Distilled]:
        """The trained student's samplers by NFE as networks plus rules (logged as the run's
        MLflow model ``student``); {} for training-free methods, whose sampler is the teacher
        itself and is rebuilt from the run's params (``bench sample``)."""
        return {}

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
