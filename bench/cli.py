"""``bench``: the command line. Heavy libraries are imported lazily so ``bench ls`` is quick.

``bench run``'s flags are built from ``RunConfig``'s fields (bench.config.add_flags), so a
field's name, type, default and help are declared once. Subcommands of other packages
(``sweep``, ``perf``, ``report``) plug in through the ``bench.commands`` entry points: the core
imports none of them.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
from typing import Optional, Sequence

from bench.errors import BenchError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description="Distill diffusion models and benchmark the students.")
    sub = p.add_subparsers(dest="command", required=True)
    _add_run(sub)
    sy = sub.add_parser("sync", help="replay runs' spooled MLflow data (kept while the store was down)")
    sy.add_argument("spools", nargs="*", help="spool folders (default: every checkpoints/*/spool)")
    sy.add_argument("--tracking-uri", help="send to this store instead of the one each spool recorded")
    sy.set_defaults(handler=cmd_sync)
    ls = sub.add_parser("ls", help="list teachers, methods and metrics")
    ls.add_argument("--method", help="show this method's config fields with defaults and help")
    ls.set_defaults(handler=cmd_ls)
    _add_assets(sub)
    c = sub.add_parser("cache", help="list or delete cached references and synthetic data")
    c.add_argument("action", choices=["ls", "clear"])
    c.add_argument("--kind", choices=["references", "synthetic"], help="only this kind of entry")
    c.set_defaults(handler=cmd_cache)
    u = sub.add_parser("ui", help="the MLflow UI on 127.0.0.1 over the same store")
    u.add_argument("--tracking-uri", help="MLflow store (default sqlite:///./mlflow.db)")
    u.add_argument("--port", type=int, default=5000, help="TCP port, 1..65535 (default 5000)")
    u.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1: the UI has no authentication)")
    u.set_defaults(handler=cmd_ui)
    from bench.use_cli import add_parsers

    add_parsers(sub)  # sample, export
    _add_plugins(sub)
    return p


def _add_run(sub) -> None:
    from bench.config import add_flags
    from bench.run_config import RunConfig

    r = sub.add_parser("run", help="distill, evaluate FID by NFE, log to MLflow")
    add_flags(r, RunConfig)
    r.add_argument("--config", help="YAML file: run fields, plus 'set:' for method fields")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="method config field (repeatable); bench ls --method NAME lists them")
    r.add_argument("--no-system-metrics", dest="system_metrics", action="store_const", const="false",
                   help="do not log MLflow system metrics (CPU, memory, GPU)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--dry-run", action="store_true", help="print the resolved run and method config and exit")
    r.add_argument("--resume", nargs="?", const="auto", metavar="RUN_ID",
                   help="continue the newest interrupted run of this same configuration (or RUN_ID) "
                        "from its newest checkpoint, in the same MLflow run")
    r.add_argument("--resume-from", metavar="CHECKPOINT",
                   help="start training from this checkpoint (e.g. the last good state of a run that "
                        "diverged, with a lower lr); a new MLflow run")
    r.set_defaults(handler=cmd_run)


def _add_assets(sub) -> None:
    t = sub.add_parser("teacher", help="teacher utilities")
    tsub = t.add_subparsers(dest="action", required=True)
    tt = tsub.add_parser("train", help="reproduce a shipped teacher's weights")
    tt.add_argument("name", choices=["digits", "digits_eps", "digits_cond"],
                    help="a shipped teacher (its recipe)")
    tt.add_argument("--out", default="teacher", help="output folder (diffusers layout)")
    tt.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe field")
    tt.set_defaults(handler=cmd_teacher)
    f = sub.add_parser("features", help="feature-extractor utilities")
    fsub = f.add_subparsers(dest="action", required=True)
    ft = fsub.add_parser("train", help="reproduce the shipped digits feature network")
    ft.add_argument("name", choices=["digits"])
    ft.add_argument("--out", default="digits_cnn.safetensors", help="output safetensors file")
    ft.set_defaults(handler=cmd_features)


def _add_plugins(sub) -> None:
    """Subcommands of other packages: each ``bench.commands`` entry point adds its parser."""
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group="bench.commands"), key=lambda e: e.name):
        ep.load()(sub)


def _run_config(args: argparse.Namespace):
    from bench import config as cfgs
    from bench.run_config import RunConfig

    values, sets = {}, {}
    if args.config:
        data = cfgs.load_yaml(args.config)
        sets = data.pop("set", None) or {}
        if not isinstance(sets, dict):
            raise BenchError(f"config {args.config}: set: must be a mapping of method field: value, "
                             f"got {type(sets).__name__}")
        values.update(data)
    values.update(cfgs.flag_values(args, RunConfig))
    sets.update(cfgs.parse_sets(args.set))
    return cfgs.replace(RunConfig(), values, what="run"), sets


def cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    run_cfg, sets = _run_config(args)
    from bench.run import RunHooks, build_method, run

    _, method_cfg = build_method(run_cfg, sets)  # a bad method or --set fails before anything heavy
    if args.dry_run:
        print(dry_run_text(run_cfg, method_cfg))
        return 0
    if args.resume and args.resume_from:
        raise BenchError("give --resume (continue a run) or --resume-from (a new run from a checkpoint), not both")
    hooks = RunHooks(resume=args.resume, checkpoint=Path(args.resume_from) if args.resume_from else None)
    with _sigterm_raises():  # a scheduler's SIGTERM: the run ends KILLED
        result = run(run_cfg, sets, progress=not args.quiet, hooks=hooks)
    print(format_summary(result.rows, result.feature_extractor))
    print(f"MLflow run {result.run_id} (experiment {run_cfg.experiment!r}); browse with `bench ui`")
    if result.spool:
        print(f"bench: warning: the MLflow store failed during the run; its params, metrics and "
              f"artifacts (student included) are in {result.spool}; run `bench sync {result.spool}` "
              f"when the store is back", file=sys.stderr)
    return 0


def dry_run_text(run_cfg, method_cfg) -> str:
    """The resolved configuration, as ``bench run --dry-run`` prints it (cf. EDM's --dry-run)."""
    from bench.config import to_json

    nfe = "" if run_cfg.nfe else "  (nfe: the method's default step counts)"
    return f"run config:{nfe}\n{to_json(run_cfg)}\n{run_cfg.method} config:\n{to_json(method_cfg)}"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where it arrives so that ``finally`` blocks run (the run ends KILLED, a
    server child is stopped); a KeyboardInterrupt, so everything that handles Ctrl-C handles it."""


def _terminated(signum, frame):
    raise Terminated


@contextlib.contextmanager
def _sigterm_raises():
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_sync(args: argparse.Namespace) -> int:
    """Each spool is synced on its own (one that fails never stops the others), then a summary."""
    from pathlib import Path

    from bench.spool import pending, sync_all
    from bench.tracking import _quiet

    _quiet()  # MLflow's own database tracebacks would precede our one line per spool
    spools = [Path(p) for p in args.spools] or sorted(Path("checkpoints").glob("*/spool"))
    waiting = [p for p in spools if args.spools or _waits(p, pending)]
    results = sync_all(waiting, args.tracking_uri)
    for spool, sent, error in results:
        if error:
            print(f"bench: error: {error}", file=sys.stderr)
        else:
            print(f"{spool}: {sent} events synced")
    failed = [str(s) for s, _, error in results if error]
    if not results:
        print("nothing to sync")
    elif len(results) > 1 or failed:
        done = [str(s) for s, _, error in results if not error]
        print(f"synced {len(done)} of {len(results)} spools" + (f": {', '.join(done)}" if done else "")
              + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 2 if failed else 0


def _waits(spool, pending) -> bool:
    """Whether a spool has events to sync; one that cannot be read is reported by sync itself."""
    try:
        return pending(spool) > 0
    except BenchError:
        return True


def format_summary(rows, extractor: str) -> str:
    # conditional scores only where some row has them (class accuracy, CLIP score)
    extra = [(key, title) for key, title in (("class_accuracy", "class acc"), ("clip_score", "CLIP"))
             if any(not math.isnan(r.get(key, math.nan)) for r in rows)]
    head = (f"{'NFE':>5}  {'FID[' + extractor + ']':>18}  {'KID':>8}  {'prec':>5}  {'recall':>6}  "
            f"{'PSNR vs teacher':>15}  {'s/image':>9}  {'n':>6}" + "".join(f"  {t:>9}" for _, t in extra))
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['nfe']:>5}  {r['fid']:>18.3f}  {r['kid']:>8.4f}  {r['precision']:>5.3f}  "
                     f"{r['recall']:>6.3f}  {r['teacher_psnr']:>12.2f} dB  "
                     f"{r['sample_seconds_per_image']:>9.2e}  {r['n']:>6}"
                     + "".join(f"  {r[k]:>9.3f}" for k, _ in extra))
    return "\n".join(lines)


def cmd_ls(args: argparse.Namespace) -> int:
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
    from bench.teachers.digits import RECIPES, train_digits_teacher

    recipe = cfgs.replace(RECIPES[args.name], cfgs.parse_sets(args.set), what=f"{args.name} recipe")
    with tqdm(total=recipe.iterations, unit="it", desc=f"training the {args.name} teacher") as bar:
        def progress(it: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

        out = train_digits_teacher(recipe, Path(args.out), progress)
    print(f"saved {out} (copy it over bench/assets/{args.name} to ship it)")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from bench.features import train_digits_cnn

    accuracy = train_digits_cnn(args.out)
    print(f"saved {args.out}; held-out accuracy {accuracy:.4f}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from bench import cache

    if args.action == "ls":
        rows = cache.listing(args.kind)
        print("\n".join(rows) if rows else f"the cache {cache.cache_root()} is empty")
    else:
        print(f"removed {cache.clear(args.kind)} cached file(s) from {cache.cache_root()}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from bench.tracking import resolve_uri
    from bench.ui import serve

    with _sigterm_raises():  # SIGTERM stops the server child too
        return serve(resolve_uri(args.tracking_uri), args.host, args.port)


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("bench: terminated (SIGTERM)", file=sys.stderr)
        return 143  # 128 + SIGTERM, as a shell reports a process the signal ended
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
