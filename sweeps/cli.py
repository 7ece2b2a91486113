"""``bench sweep SPEC.yaml``: the command-line side of sweeps (parser and handler); ``add_parser``
is the ``bench.commands`` entry point that plugs it into ``bench``."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    s = sub.add_parser("sweep", help="tune a method's hyperparameters with Ray Tune (spec: sweeps/*.yaml)")
    s.add_argument("spec", help="sweep spec YAML, e.g. sweeps/digits_boot.yaml")
    s.add_argument("--address", help="an existing Ray cluster (e.g. 10.0.0.1:6379; default: a local Ray)")
    s.add_argument("--num-samples", type=int, help="trials (overrides the spec's num_samples)")
    s.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep: finished trials are kept, others continue")
    s.add_argument("--tracking-uri", help="MLflow store every node reaches (default sqlite:///./mlflow.db)")
    s.add_argument("--quiet", action="store_true", help="no Ray Tune progress table")
    s.set_defaults(handler=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from sweeps.driver import sweep
    from sweeps.spec import load_spec

    spec = load_spec(args.spec)
    if args.num_samples is not None and args.num_samples < 1:
        from bench.errors import BenchError

        raise BenchError(f"--num-samples must be >= 1, got {args.num_samples}")
    result = sweep(spec, args.address, args.num_samples, args.resume, args.tracking_uri,
                   verbose=0 if args.quiet else 1)
    print(f"sweep {spec.name}: {result.trials} trials, {result.completed} completed, "
          f"{result.stopped_early} stopped early by ASHA, {result.cut_by_budget} cut by the time budget, "
          f"{result.errored} failed, {result.seconds:.0f} s")
    if result.best_run_id:
        config = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in sorted(result.best_config.items()))
        print(f"best {spec.objective} = {result.best_value:.4f} with {config} (MLflow run {result.best_run_id})")
    else:
        print("no trial completed its final evaluation")
    print(f"MLflow parent run {result.parent_run_id}; browse with `bench ui`")
    return 0
