"""``bench perf``: how fast the harness runs, printed as a table and logged to one MLflow run.

Sections (each measured side by side in this one process, figures are medians):
  train     images/s, achieved FLOP/s and model-FLOP utilisation of BOOT and progressive
            distillation through the real training loop; MLflow logging overhead per step
  sample    images/s per method and NFE at one batch size; BOOT one-step vs DDIM-50
  eval      evaluator images/s and the speed-up of a second evaluation whose reference is cached
MFU is taken against the data-sheet bf16 peak on known GPUs (or ``--peak-tflops``), else against
a matmul measured on this device; the table says which. ``--no-mlflow`` never imports mlflow.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from bench.config import option
from bench.errors import BenchError

SECTIONS = ("train", "sample", "eval")


@dataclasses.dataclass(frozen=True)
class PerfConfig:
    teacher: Optional[str] = option(None, "registered teacher (default digits)")
    arch: Optional[str] = option(None, "hub architecture with random weights: cifar10, lsun_bedroom, ...")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    sections: tuple[str, ...] = option(SECTIONS, "what to measure: train, sample, eval")
    methods: tuple[str, ...] = option(("boot", "progressive"), "trained methods to time")
    batch_size: int = option(64, "training batch size")
    steps: int = option(10, "training steps per timed block")
    blocks: int = option(3, "timed blocks per arm (median over blocks)")
    warmup: int = option(3, "untimed training steps first (compile, autotuning)")
    precision: str = option("auto", "auto (bf16 on CUDA), fp32 or bf16")
    compile: str = option("off", "off, sampler (the one-step sampler) or all (training too)")
    channels_last: str = option("off", "off, on, or both (BOOT training measured each way)")
    grad_checkpointing: str = option("off", "off, on, or both (BOOT training measured each way)")
    sample_batch_size: int = option(250, "sampling batch size")
    nfe: tuple[int, ...] = option((1, 2, 4, 8, 50), "DDIM step counts to time")
    repeats: int = option(5, "timed sampling repeats")
    eval_samples: int = option(1000, "n of the timed evaluations (digits teacher)")
    reference_samples: int = option(1000, "n of the data-free reference built by the first evaluation")
    reference_steps: int = option(64, "DDIM steps of that reference")
    log_every: int = option(10, "logged arm: MLflow calls every N steps, as in a run (TrainConfig.log_every)")
    peak_tflops: Optional[float] = option(None, "peak for MFU (default: data sheet by GPU name, else measured)")

    def __post_init__(self):
        if self.teacher and self.arch:
            raise BenchError("give --teacher or --arch, not both")
        from bench.perf_models import ARCHS

        if self.arch and self.arch not in ARCHS:
            raise BenchError(f"unknown --arch {self.arch!r}; choose among {', '.join(ARCHS)}")
        if set(self.sections) - set(SECTIONS) or not self.sections:
            raise BenchError(f"--sections must be among {','.join(SECTIONS)}")
        if set(self.methods) - {"boot", "progressive"}:
            raise BenchError("--methods must be among boot,progressive")
        if self.compile not in ("off", "sampler", "all") or not {self.channels_last, self.grad_checkpointing} <= {
                "off", "on", "both"}:
            raise BenchError("--compile takes off|sampler|all; --channels-last and --grad-checkpointing off|on|both")
        if min(self.batch_size, self.steps, self.blocks, self.sample_batch_size, self.repeats) < 1:
            raise BenchError("batch sizes, --steps, --blocks and --repeats must be >= 1")


# (metric, comparison, bound, applies to): the targets of issue #8, shown beside the figures
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


def _train(cfg: PerfConfig, teacher, device, log_fn, extra: dict) -> dict[str, float]:
    from bench.perf_train import measure_training

    base = {"batch_size": cfg.batch_size, "log_every": cfg.log_every, "precision": cfg.precision, "compile": cfg.compile == "all",
            "grad_checkpointing": cfg.grad_checkpointing == "on", "channels_last": cfg.channels_last == "on"}
    out: dict[str, float] = {}
    for method in cfg.methods:
        r = measure_training(method, teacher, device, base, cfg.steps, cfg.warmup, cfg.blocks,
                             log_fn if method == cfg.methods[0] else None)
        for key in ("logging_overhead_fraction", "logging_overhead_fraction_ab", "logging_call_seconds"):
            if key in r:
                out[key] = r.pop(key)
        r.pop("log_every", None)
        out.update({f"{method}_train_{k}": v for k, v in r.items()})
    for flag in ("channels_last", "grad_checkpointing"):  # "both": BOOT once more with the flag on
        if getattr(cfg, flag) == "both" and "boot" in cfg.methods:
            r = measure_training("boot", teacher, device, {**base, flag: True}, cfg.steps, cfg.warmup,
                                 cfg.blocks)
            out.update({f"boot_train_{k}_{flag}": v for k, v in r.items() if k != "batch_size"})
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    from bench.perf_models import matmul_peak, peak_flops

    out["matmul_peak_tflops"] = matmul_peak(device, bf16) / 1e12
    peak, source = peak_flops(device, bf16, cfg.peak_tflops, out["matmul_peak_tflops"] * 1e12)
    extra["peak_source"], out["peak_tflops"] = source, peak / 1e12
    for key in [k for k in out if "_train_achieved_flops" in k]:
        out[key.replace("achieved_flops", "mfu")] = out[key] / peak
        out[key.replace("achieved_flops", "achieved_tflops")] = out.pop(key) / 1e12
    return out


def measure(cfg: PerfConfig, log_fn=None) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics without the ``perf/`` prefix, params describing what was measured)."""
    from bench.perf_models import forward_flops, load
    from bench.run import resolve_device

    device = resolve_device(cfg.device)
    if cfg.compile != "off":
        from bench.accel import check_compile

        check_compile(device)
    teacher, label = load(cfg.teacher, cfg.arch, device)
    params = {**{f"perf.{f.name}": str(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)},
              "perf.teacher": label, "perf.random_weights": str(bool(cfg.arch)), "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "cpu_threads": str(torch.get_num_threads())}
    metrics: dict[str, float] = {"forward_gflop_per_image": forward_flops(teacher) / 1e9}
    if "train" in cfg.sections:
        metrics.update(_progress("train", lambda: _train(cfg, teacher, device, log_fn, params)))
    if "sample" in cfg.sections:
        metrics.update(_progress("sample", lambda: _sample(cfg, teacher, device)))
    if "eval" in cfg.sections:
        from bench.perf_sample import measure_evaluation

        metrics.update(_progress("eval", lambda: measure_evaluation(
            device, cfg.eval_samples, cfg.reference_samples, cfg.reference_steps, cfg.sample_batch_size)))
    return metrics, params


def _progress(section: str, fn) -> dict[str, float]:
    """Run one section; its figures go to stderr at once, so a long suite shows where it is."""
    start = time.perf_counter()
    out = fn()
    print(f"bench perf: {section} done in {time.perf_counter() - start:.0f} s: "
          + ", ".join(f"{k}={v:.4g}" for k, v in out.items()), file=sys.stderr, flush=True)
    return out


def _sample(cfg: PerfConfig, teacher, device) -> dict[str, float]:
    from bench.perf_sample import measure_sampling

    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    s = measure_sampling(teacher, device, cfg.nfe, cfg.sample_batch_size, cfg.repeats,
                         cfg.compile != "off", bf16)
    return {f"sample_{k}": v for k, v in s.items()}


def _target(name: str, value: float, params: dict[str, str]) -> str:
    where = f"{params['device_name']} {params['perf.arch']}" if params["device"] != "cpu" else "cpu"
    for metric, op, bound, scope in TARGETS:
        if metric == name and all(word in where for word in scope.split()):
            ok = value < bound if op == "<" else value >= bound if op == ">=" else value <= bound
            return f"{op} {bound:g} {'ok' if ok else 'MISSED'}"
    return ""


def format_table(metrics: dict[str, float], params: dict[str, str]) -> str:
    head = f"bench perf: {params['perf.teacher']} on {params['device_name']} (torch {params['torch']})"
    lines = [head, f"{'metric':<52} {'value':>12}  target", "-" * 80]
    for name, value in metrics.items():
        text = f"{value:>12.4g}" if isinstance(value, float) and math.isfinite(value) else f"{value!s:>12}"
        lines.append(f"{'perf/' + name:<52} {text}  {_target(name, value, params)}".rstrip())
    if "peak_source" in params:
        lines.append(f"MFU is against {metrics['peak_tflops']:.4g} TFLOP/s ({params['peak_source']}); "
                     f"FLOPs by torch.utils.flop_counter, optimiser excluded")
    if params["perf.random_weights"] == "True":
        lines.append("random weights: throughput only (weights do not change the cost)")
    return "\n".join(lines)


def run_perf(cfg: PerfConfig, mlflow: bool = True, tracking_uri: Optional[str] = None,
             experiment: str = "perf", json_path: Optional[str] = None) -> dict[str, float]:
    """Measure, print the table, log one MLflow run (unless ``mlflow`` is False), write JSON."""
    if not mlflow:
        metrics, params = measure(cfg)
    else:
        import mlflow as mlf

        from bench.tracking import mlflow_run

        with mlflow_run(experiment, tracking_uri, run_name=f"perf {cfg.arch or cfg.teacher or 'digits'}",
                        tags={"bench.perf": "1"}):
            metrics, params = measure(cfg, log_fn=lambda m, step: mlf.log_metrics(m, step=step))
            mlf.log_params(params)
            mlf.log_metrics({f"perf/{k}": float(v) for k, v in metrics.items()})
    print(format_table(metrics, params), flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps({"params": params, "metrics": metrics}, indent=2))
    return metrics


if __name__ == "__main__":  # pragma: no cover - ``bench perf`` is the entry point
    sys.exit("use: bench perf --help")
