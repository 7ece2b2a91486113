"""``bench``: the command line. Heavy libraries are imported lazily so ``bench ls`` is quick."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Optional, Sequence

from bench.errors import BenchError

RUN_FLAGS = ("method", "teacher", "teacher_path", "nfe", "num_samples", "batch_size", "seed",
             "device", "experiment", "tracking_uri", "reference", "metrics", "inception_weights")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description="Distill diffusion models and benchmark the students.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="distill, evaluate FID by NFE, log to MLflow")
    r.add_argument("--method", help="method name (default ddim; see bench ls)")
    r.add_argument("--teacher", help="teacher name (default digits)")
    r.add_argument("--teacher-path", help="local folder with the teacher's weights")
    r.add_argument("--nfe", help="comma-separated step counts, e.g. 1,2,4,8")
    r.add_argument("--num-samples", help="samples per NFE (n of FID)")
    r.add_argument("--batch-size", help="sampling batch size")
    r.add_argument("--seed", help="base seed")
    r.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    r.add_argument("--reference", help="auto, data, teacher, folder:PATH or stats:PATH.npz")
    r.add_argument("--metrics", help="comma-separated: fid,kid,pr (default all)")
    r.add_argument("--inception-weights", help="path of weights-inception-2015-12-05-6726825d.pth")
    r.add_argument("--config", help="YAML file: run fields, plus 'set:' for method fields")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="method config field (repeatable); bench ls --method NAME lists them")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///./mlflow.db)")
    r.add_argument("--experiment", help="MLflow experiment name")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--resume", nargs="?", const="auto", metavar="RUN_ID",
                   help="continue the newest interrupted run of this same configuration (or RUN_ID) "
                        "from its newest checkpoint, in the same MLflow run")
    sy = sub.add_parser("sync", help="replay runs' spooled MLflow data (kept while the store was down)")
    sy.add_argument("spools", nargs="*", help="spool folders (default: every checkpoints/*/spool)")
    sy.add_argument("--tracking-uri", help="send to this store instead of the one each spool recorded")
    ls = sub.add_parser("ls", help="list teachers, methods and metrics")
    ls.add_argument("--method", help="show this method's config fields with defaults and help")
    t = sub.add_parser("teacher", help="teacher utilities")
    tsub = t.add_subparsers(dest="action", required=True)
    tt = tsub.add_parser("train", help="reproduce a shipped teacher's weights")
    tt.add_argument("name", choices=["digits"])
    tt.add_argument("--out", default="digits_teacher", help="output folder (diffusers layout)")
    tt.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe field")
    f = sub.add_parser("features", help="feature-extractor utilities")
    fsub = f.add_subparsers(dest="action", required=True)
    ft = fsub.add_parser("train", help="reproduce the shipped digits feature network")
    ft.add_argument("name", choices=["digits"])
    ft.add_argument("--out", default="digits_cnn.safetensors", help="output safetensors file")
    rp = sub.add_parser("report", help="tables, plots and an HTML page from the MLflow runs")
    rp.add_argument("--experiment", default="distill-bench", help="MLflow experiment to report on")
    rp.add_argument("--filter", default="", help="MLflow run filter, e.g. \"params.teacher = 'digits'\"")
    rp.add_argument("--out", default="report", help="output folder")
    rp.add_argument("--format", default="md,tex,csv,html", help="comma-separated: md, tex, csv, html")
    rp.add_argument("--baseline-steps", type=int, default=50, help="speed-up is against DDIM at this NFE")
    rp.add_argument("--tracking-uri", help="MLflow store (default sqlite:///./mlflow.db)")
    from sweeps.cli import add_parser as add_sweep

    add_sweep(sub)
    u = sub.add_parser("ui", help="the MLflow UI on 127.0.0.1 over the same store")
    u.add_argument("--tracking-uri", help="MLflow store (default sqlite:///./mlflow.db)")
    u.add_argument("--port", type=int, default=5000)
    u.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1: the UI has no authentication)")
    from bench.perf_cli import add_parser as add_perf  # argparse only: bench --help stays quick

    add_perf(sub)
    return p


def _run_config(args: argparse.Namespace):
    from bench import config as cfgs
    from bench.run import RunConfig

    values, sets = {}, {}
    if args.config:
        data = cfgs.load_yaml(args.config)
        sets = {k: v for k, v in (data.pop("set", None) or {}).items()}
        values.update(data)
    values.update({k: getattr(args, k) for k in RUN_FLAGS if getattr(args, k) is not None})
    sets.update(cfgs.parse_sets(args.set))
    return cfgs.replace(RunConfig(), values, what="run"), sets


def cmd_run(args: argparse.Namespace) -> int:
    run_cfg, sets = _run_config(args)
    from bench.run import RunHooks, build_method, run

    build_method(run_cfg, sets)  # fail on a bad method or --set before loading anything heavy
    previous = signal.signal(signal.SIGTERM, _terminated)  # a scheduler's SIGTERM: the run ends KILLED
    try:
        result = run(run_cfg, sets, progress=not args.quiet, hooks=RunHooks(resume=args.resume))
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(format_summary(result.rows, result.feature_extractor))
    print(f"MLflow run {result.run_id} (experiment {run_cfg.experiment!r}); browse with `bench ui`")
    if result.spool:
        print(f"bench: warning: the MLflow store failed during the run; its params, metrics and "
              f"artifacts (student included) are in {result.spool}; run `bench sync {result.spool}` "
              f"when the store is back", file=sys.stderr)
    return 0


def _terminated(signum, frame):
    raise KeyboardInterrupt


def cmd_sync(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.spool import pending, sync

    spools = [Path(p) for p in args.spools] or sorted(Path("checkpoints").glob("*/spool"))
    waiting = [p for p in spools if pending(p) or args.spools]
    for spool in waiting:
        print(f"{spool}: {sync(spool, args.tracking_uri)} events synced")
    if not waiting:
        print("nothing to sync")
    return 0


def format_summary(rows, extractor: str) -> str:
    head = (f"{'NFE':>5}  {'FID[' + extractor + ']':>18}  {'KID':>8}  {'prec':>5}  {'recall':>6}  "
            f"{'PSNR vs teacher':>15}  {'s/image':>9}  {'n':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['nfe']:>5}  {r['fid']:>18.3f}  {r['kid']:>8.4f}  {r['precision']:>5.3f}  "
                     f"{r['recall']:>6.3f}  {r['teacher_psnr']:>12.2f} dB  "
                     f"{r['sample_seconds_per_image']:>9.2e}  {r['n']:>6}")
    return "\n".join(lines)


def cmd_ls(args: argparse.Namespace) -> int:
    import bench.features  # noqa: F401  registers the feature extractors
    import bench.teachers  # noqa: F401
    import methods  # noqa: F401
    from bench import config as cfgs
    from bench.registry import FEATURES, METHODS, TEACHERS

    if args.method:
        cls = METHODS.get(args.method)
        print(f"{args.method}: {METHODS.summary(args.method)}")
        for name, tp, default, help_ in cfgs.describe(cls.Config):
            print(f"  --set {name}=<{tp}>  (default {default})  {help_}")
        return 0
    for title, reg in (("teacher", TEACHERS), ("method", METHODS), ("metric", FEATURES)):
        for name in reg:
            print(f"{title:<8} {name:<20} {reg.summary(name)}")
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm.auto import tqdm

    from bench import config as cfgs
    from bench.teachers.digits import DigitsRecipe, train_digits_teacher

    recipe = cfgs.replace(DigitsRecipe(), cfgs.parse_sets(args.set), what="digits recipe")
    with tqdm(total=recipe.iterations, unit="it", desc="training digits teacher") as bar:
        def progress(it: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

        out = train_digits_teacher(recipe, Path(args.out), progress)
    print(f"saved {out} (copy it over bench/assets/digits to ship it)")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from bench.features import train_digits_cnn

    accuracy = train_digits_cnn(args.out)
    print(f"saved {args.out}; held-out accuracy {accuracy:.4f}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from reports.report import build_report

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    tables = build_report(args.experiment, Path(args.out), args.tracking_uri, args.filter, formats,
                          args.baseline_steps)
    for teacher, table in tables.items():
        print(f"== {teacher} ==")
        print(table.to_string(index=False))
    print(f"report written to {args.out}/ and logged to MLflow as a 'report' run")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from bench.tracking import resolve_uri

    uri = resolve_uri(args.tracking_uri)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    print(f"MLflow UI for {uri} at http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", args.host, "--port", str(args.port), "--workers", "1"]
    os.execve(sys.executable, cmd, env)  # become the server: its PID is ours, so stopping us stops it


def _cmd_sweep(args: argparse.Namespace) -> int:
    from sweeps.cli import cmd_sweep

    return cmd_sweep(args)


def _cmd_perf(args: argparse.Namespace) -> int:
    from bench.perf_cli import cmd_perf

    return cmd_perf(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = _parser().parse_args(argv)
    handler = {"run": cmd_run, "ls": cmd_ls, "teacher": cmd_teacher, "features": cmd_features,
               "ui": cmd_ui, "report": cmd_report, "sync": cmd_sync, "sweep": _cmd_sweep, "perf": _cmd_perf}[args.command]
    try:
        return handler(args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
