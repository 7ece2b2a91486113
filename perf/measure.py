"""``bench perf``'s sections, measured side by side in one process, printed as a table and
logged to one MLflow run (figures are medians):

  train     images/s, achieved FLOP/s and model-FLOP utilisation of each method that trains,
            through the real training loop; MLflow logging overhead per step
  sample    images/s per method and NFE at one batch size; one-step vs the teacher's DDIM-50
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

from perf.config import TARGETS, PerfConfig


def _trained(cfg: PerfConfig) -> list[str]:
    """The methods among ``cfg.methods`` that train: they implement ``training_stage``."""
    from bench.method import Method
    from bench.registry import METHODS

    return [m for m in cfg.methods if METHODS.get(m).training_stage is not Method.training_stage]


def _train(cfg: PerfConfig, teacher, device, log_fn, extra: dict) -> dict[str, float]:
    from perf.models import matmul_peak, peak_flops
    from perf.train import measure_training

    base = {"batch_size": cfg.batch_size, "log_every": cfg.log_every, "precision": cfg.precision,
            "compile": cfg.compile == "all", "grad_checkpointing": cfg.grad_checkpointing == "on",
            "channels_last": cfg.channels_last == "on"}
    trained = _trained(cfg)
    out: dict[str, float] = {}
    for method in trained:
        r = measure_training(method, teacher, device, base, cfg.steps, cfg.warmup, cfg.blocks,
                             log_fn if method == trained[0] else None)
        for key in ("logging_overhead_fraction", "logging_overhead_fraction_ab", "logging_call_seconds"):
            if key in r:
                out[key] = r.pop(key)
        r.pop("log_every", None)
        out.update({f"{method}_train_{k}": v for k, v in r.items()})
    for flag in ("channels_last", "grad_checkpointing"):  # "both": the first method once more, flag on
        if getattr(cfg, flag) == "both" and trained:
            r = measure_training(trained[0], teacher, device, {**base, flag: True}, cfg.steps, cfg.warmup,
                                 cfg.blocks)
            out.update({f"{trained[0]}_train_{k}_{flag}": v for k, v in r.items() if k != "batch_size"})
    bf16 = cfg.uses_bf16(device)
    out["matmul_peak_tflops"] = matmul_peak(device, bf16) / 1e12
    peak, source = peak_flops(device, bf16, cfg.peak_tflops, out["matmul_peak_tflops"] * 1e12)
    extra["peak_source"], out["peak_tflops"] = source, peak / 1e12
    for key in [k for k in out if "_train_achieved_flops" in k]:
        out[key.replace("achieved_flops", "mfu")] = out[key] / peak
        out[key.replace("achieved_flops", "achieved_tflops")] = out.pop(key) / 1e12
    return out


def _scale(cfg: PerfConfig) -> dict[str, float]:
    from perf.scale import measure_scaling

    trained = _trained(cfg)
    if not trained:
        return {}
    overrides = {"batch_size": cfg.batch_size, "precision": cfg.precision}
    return measure_scaling(trained[0], cfg.teacher, cfg.arch, overrides, cfg.workers, cfg.steps, cfg.warmup,
                           cfg.blocks, cfg.gpus_per_worker)


def _sample(cfg: PerfConfig, teacher, device) -> dict[str, float]:
    from perf.sample import measure_sampling

    s = measure_sampling(cfg.methods, teacher, device, cfg.nfe, cfg.sample_batch_size, cfg.repeats,
                         cfg.compile != "off", cfg.uses_bf16(device))
    return {f"sample_{k}": v for k, v in s.items()}


def measure(cfg: PerfConfig, log_fn=None) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics without the ``perf/`` prefix, params describing what was measured)."""
    from bench.run import resolve_device
    from perf.models import forward_flops, load

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
    if "scale" in cfg.sections:
        metrics.update(_progress("scale", lambda: _scale(cfg)))
    if "eval" in cfg.sections:
        from perf.sample import measure_evaluation

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
