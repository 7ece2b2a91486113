"""The ``bench perf`` subcommand's flags (kept free of torch so ``bench --help`` stays quick)."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("perf", help="benchmark the harness: training, sampling, evaluation speed",
                       description="Training images/s and MFU (BOOT, progressive), sampling images/s "
                                   "by NFE, MLflow logging overhead, evaluator and reference-cache "
                                   "speed; prints a table and logs one MLflow run.")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--teacher", help="registered teacher (default digits)")
    who.add_argument("--arch", help="hub architecture with random weights: cifar10, lsun_bedroom, "
                                    "lsun_church, celebahq (throughput only)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--sections", default="train,sample,eval", help="comma-separated: train,sample,eval")
    p.add_argument("--methods", default="boot,progressive", help="trained methods to time")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size")
    p.add_argument("--steps", type=int, default=10, help="training steps per timed block")
    p.add_argument("--blocks", type=int, default=3, help="timed blocks per arm (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--compile", default="off", choices=["off", "sampler", "all"],
                   help="torch.compile the one-step sampler, or training as well")
    p.add_argument("--channels-last", default="off", choices=["off", "on", "both"],
                   help="both: time BOOT training each way")
    p.add_argument("--grad-checkpointing", default="off", choices=["off", "on", "both"],
                   help="gradient checkpointing in training; both: time BOOT training each way")
    p.add_argument("--sample-batch-size", type=int, default=250)
    p.add_argument("--nfe", default="1,2,4,8,50", help="DDIM step counts to time")
    p.add_argument("--repeats", type=int, default=5, help="timed sampling repeats")
    p.add_argument("--eval-samples", type=int, default=1000, help="n of the timed evaluations")
    p.add_argument("--reference-samples", type=int, default=1000)
    p.add_argument("--reference-steps", type=int, default=64)
    p.add_argument("--log-every", type=int, default=10, help="MLflow calls every N steps in the logged arm")
    p.add_argument("--peak-tflops", type=float, help="peak FLOP/s for MFU, in TFLOP/s")
    p.add_argument("--tracking-uri", help="MLflow store (default sqlite:///./mlflow.db)")
    p.add_argument("--experiment", default="perf", help="MLflow experiment")
    p.add_argument("--no-mlflow", action="store_true", help="print only; mlflow is never imported")
    p.add_argument("--json", help="also write the figures to this JSON file")


def _ints(text: str, flag: str) -> tuple[int, ...]:
    from bench.errors import BenchError

    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise BenchError(f"{flag} takes comma-separated integers, got {text!r}") from None


def cmd_perf(args: argparse.Namespace) -> int:
    from bench.perf import PerfConfig, run_perf

    words = lambda text: tuple(w.strip() for w in text.split(",") if w.strip())  # noqa: E731
    cfg = PerfConfig(
        teacher=args.teacher, arch=args.arch, device=args.device, sections=words(args.sections),
        methods=words(args.methods), batch_size=args.batch_size, steps=args.steps, blocks=args.blocks,
        warmup=args.warmup, precision=args.precision, compile=args.compile,
        channels_last=args.channels_last, grad_checkpointing=args.grad_checkpointing,
        sample_batch_size=args.sample_batch_size, nfe=_ints(args.nfe, "--nfe"), repeats=args.repeats,
        eval_samples=args.eval_samples, reference_samples=args.reference_samples,
        reference_steps=args.reference_steps, log_every=args.log_every, peak_tflops=args.peak_tflops)
    run_perf(cfg, mlflow=not args.no_mlflow, tracking_uri=args.tracking_uri,
             experiment=args.experiment, json_path=args.json)
    return 0
