"""How a run assembles its parts: the device, the method and its config, the reference and the
quick evaluation during training. ``bench.run`` (one process) and ``bench.parallel`` (each
Ray Train worker) build them the same way from here.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch

from bench import config as cfgs
from bench.errors import BenchError, first_line
from bench.run_config import RunConfig


def resolve_device(name: str) -> torch.device:
    """The torch device of ``--device`` (auto: CUDA where visible)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BenchError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda requested but no CUDA device is visible; use --device cpu")
    return device


def load_run_teacher(run_cfg: RunConfig, device: torch.device, path=None):
    """The run's teacher on ``device`` (from ``path`` where given, else --teacher-path), with the
    run's --prompts (text-to-image teachers), guided at --guidance-scale; a scale for an
    unconditional teacher, or prompts for a teacher without text, is a BenchError."""
    from bench.teachers import load_teacher

    teacher = load_teacher(run_cfg.teacher, path or run_cfg.teacher_path, device=str(device)).to(device)
    if run_cfg.prompts:
        from bench.teachers.text import read_prompts, use_prompts

        use_prompts(teacher, read_prompts(run_cfg.prompts))
    if run_cfg.guidance_scale != 1.0:
        if not teacher.num_classes:
            raise BenchError(f"--guidance-scale {run_cfg.guidance_scale:g} needs a class-conditional "
                             f"teacher; {run_cfg.teacher!r} is unconditional (use 1, or e.g. digits_cond)")
        teacher.guidance_scale = float(run_cfg.guidance_scale)
    return teacher


def build_method(run_cfg: RunConfig, overrides: Mapping[str, Any]):
    """(method class, method config) with ``--set`` overrides applied; validates early."""
    from bench.registry import METHODS

    cls = METHODS.get(run_cfg.method)
    return cls, cfgs.replace(cls.Config(), overrides, what=f"{run_cfg.method} config")


def make_method(run_cfg: RunConfig, method_cls, method_cfg, teacher, device):
    """(method on ``teacher``, run config with its NFEs resolved); what only this teacher rules
    out (e.g. BOOT's t_max beyond its steps, an NFE beyond them) is a BenchError."""
    try:
        method = method_cls(teacher, method_cfg, device)
    except ValueError as exc:
        raise BenchError(f"{run_cfg.method} config does not fit teacher {run_cfg.teacher!r}: {first_line(exc)}") from None
    run_cfg = dataclasses.replace(run_cfg, nfe=run_cfg.nfe or method.default_nfe())
    for k in run_cfg.nfe:
        method.check_nfe(k)
    return method, run_cfg


def run_reference(run_cfg: RunConfig, teacher, extractor, device):
    """The run's FID reference (built once, then read from the cache)."""
    from bench.reference import build_reference

    return build_reference(run_cfg.reference, teacher, extractor, n=run_cfg.reference_samples,
                           steps=run_cfg.reference_steps, seed=run_cfg.seed,
                           batch_size=run_cfg.batch_size, device=device)


def quick_eval(teacher, extractor, ref, run_cfg, device):
    """FID of a sampler on n samples during training (the final evaluation's first n seeds);
    n is raised to the feature dimension where smaller, since FID is undefined below it."""
    from bench.eval_checks import NonFinite
    from bench.evaluator import SampleSpec, evaluate

    def quick(sampler, n: int) -> float:
        spec = SampleSpec.of(teacher, max(n, extractor.dim, 2), run_cfg.seed, run_cfg.batch_size, device)
        try:
            with torch.no_grad():
                return evaluate(sampler, spec, ref, extractor, metrics=("fid",), keep_samples=0).fid
        except NonFinite as exc:
            raise BenchError(f"the quick evaluation during training found the student diverged: {exc}; "
                             f"lower lr and continue with --resume-from the newest checkpoint") from None

    return quick
