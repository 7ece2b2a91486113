"""The ``bench report`` subcommand; ``add_parser`` is the ``bench.commands`` entry point that
plugs it into ``bench`` (the core imports nothing from reports/)."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    rp = sub.add_parser("report", help="tables, plots and an HTML page from the MLflow runs")
    rp.add_argument("--experiment", default="distill-bench", help="MLflow experiment to report on")
    rp.add_argument("--filter", default="", help="MLflow run filter, e.g. \"params.teacher = 'digits'\"")
    rp.add_argument("--out", default="report", help="output folder")
    rp.add_argument("--format", default="md,tex,csv,html", help="comma-separated: md, tex, csv, html")
    rp.add_argument("--baseline-method", default="ddim", help="speed-up is against this method's run ...")
    rp.add_argument("--baseline-steps", type=int, default=50, help="... at this NFE (default: DDIM-50)")
    rp.add_argument("--tracking-uri", help="MLflow store (default sqlite:///./mlflow.db)")
    rp.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from reports.report import build_report

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    tables = build_report(args.experiment, Path(args.out), (args.baseline_method, args.baseline_steps),
                          args.tracking_uri, args.filter, formats)
    for teacher, table in tables.items():
        print(f"== {teacher} ==")
        print(table.to_string(index=False))
    print(f"report written to {args.out}/ and logged to MLflow as a 'report' run")
    return 0
