"""The ``bench perf`` subcommand: its flags are PerfConfig's fields plus where the figures go.
``add_parser`` is the ``bench.commands`` entry point that plugs it into ``bench``."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from bench.config import add_flags
    from perf.config import PerfConfig

    p = sub.add_parser("perf", help="benchmark the harness: training, sampling, evaluation speed",
                       description="Training images/s and MFU, sampling images/s by method and NFE, "
                                   "MLflow logging overhead, evaluator and reference-cache speed; "
                                   "prints a table and logs one MLflow run.")
    add_flags(p, PerfConfig)
    p.add_argument("--tracking-uri", help="MLflow store (default sqlite:///./mlflow.db)")
    p.add_argument("--experiment", default="perf", help="MLflow experiment")
    p.add_argument("--no-mlflow", action="store_true", help="print only; mlflow is never imported")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.set_defaults(handler=cmd_perf)


def cmd_perf(args: argparse.Namespace) -> int:
    from bench import config as cfgs
    from perf.config import PerfConfig
    from perf.measure import run_perf

    cfg = cfgs.replace(PerfConfig(), cfgs.flag_values(args, PerfConfig), what="perf")
    run_perf(cfg, mlflow=not args.no_mlflow, tracking_uri=args.tracking_uri,
             experiment=args.experiment, json_path=args.json)
    return 0
