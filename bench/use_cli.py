"""``bench sample`` and ``bench export``: the parsers and handlers (the work is in bench.use)."""
from __future__ import annotations

import argparse
import os

from bench.errors import BenchError


def add_parsers(sub) -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line of output, not bars
    s = sub.add_parser("sample", help="images from a finished run's student (or training-free sampler)")
    s.add_argument("--run", required=True, metavar="RUN_ID", help="MLflow run id of a `bench run`")
    s.add_argument("--nfe", type=int, help="step count (default: the run's fewest)")
    s.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    s.add_argument("--seed", type=int, help="image i uses the noise of seed (SEED, i) (default: the run's "
                   "seed, which gives the run's own samples)")
    s.add_argument("--label", type=int, help="class-conditional runs: every image of this class (default: "
                   "image i of class i mod K, as in the run)")
    out = s.add_mutually_exclusive_group()
    out.add_argument("--out", help="grid PNG (default samples-<run>-nfe<K>.png)")
    out.add_argument("--out-dir", help="folder: one PNG per image and samples.npz (float samples)")
    s.add_argument("--tracking-uri", help="MLflow store (default sqlite:///./mlflow.db)")
    s.set_defaults(handler=cmd_sample)
    e = sub.add_parser("export", help="a run's student as a diffusers folder with a model card")
    e.add_argument("--run", required=True, metavar="RUN_ID", help="MLflow run id of a trained method")
    e.add_argument("--out", required=True, help="new folder: unet/, sampling.json, portable.py, README.md")
    e.add_argument("--nfe", type=int, help="which student (progressive: one per step count; default the fewest)")
    e.add_argument("--tracking-uri", help="MLflow store (default sqlite:///./mlflow.db)")
    e.set_defaults(handler=cmd_export)


def cmd_sample(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from bench.tracking import _quiet, resolve_uri
    from bench.use import sample_images, write_images

    if args.n < 1:
        raise BenchError(f"--n must be >= 1, got {args.n}")
    _quiet()
    with tempfile.TemporaryDirectory() as scratch:
        x, nfe, spec = sample_images(args.run, resolve_uri(args.tracking_uri), args.nfe, args.n, args.seed,
                                     Path(scratch), args.label)
    out = Path(args.out or f"samples-{args.run[:8]}-nfe{nfe}.png")
    where = write_images(x, spec["data_range"], out, Path(args.out_dir) if args.out_dir else None,
                         title=f"run {args.run[:8]}, NFE {nfe}")
    print(f"{len(x)} images at NFE {nfe} from run {args.run}: {where}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from bench.tracking import _quiet, resolve_uri
    from bench.use import export

    _quiet()
    with tempfile.TemporaryDirectory() as scratch:
        out = export(args.run, resolve_uri(args.tracking_uri), Path(args.out), args.nfe, Path(scratch))
    print(f"exported run {args.run}'s student to {out}/ (UNet2DModel.from_pretrained('{out}', "
          f"subfolder='unet'); the sampling rule is in {out}/README.md and sampling.json)")
    return 0
