"""Quick FID during training against training seconds and teacher forward passes: one line per
method (its best config, mean over seeds), so the methods' cost-quality trade-offs share a picture."""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

CURVE_KEYS = ("train/fid", "train/seconds", "train/teacher_forwards")
AXES = (("seconds", "training seconds", "train_fid_vs_seconds"),
        ("teacher_forwards", "teacher forward passes (cumulative)", "train_fid_vs_teacher_forwards"))


def best_configs(raw: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """The runs of each (teacher, method)'s best config at its fewest NFE (as the tables rank)."""
    first = best.sort_values("nfe").groupby(["teacher", "method"], sort=False).head(1)
    keep = first[["teacher", "method", "config"]]
    runs = raw.drop_duplicates("run_id")[["run_id", "teacher", "method", "config", "seed"]]
    return runs.merge(keep, on=["teacher", "method", "config"])


def training_curves(client, runs: pd.DataFrame) -> pd.DataFrame:
    """Rows (teacher, method, step, fid, seconds, teacher_forwards), mean over seeds per step.
    Seconds and forwards are logged every ``log_every`` steps, the FID every ``eval_every``:
    they are interpolated at the FID's steps."""
    rows = []
    for r in runs.itertuples(index=False):
        hist = {k: sorted((p.step, p.value) for p in client.get_metric_history(r.run_id, k)) for k in CURVE_KEYS}
        if not hist["train/fid"] or not hist["train/seconds"]:
            continue  # training-free, or trained without quick evaluations (eval_every=0)
        steps = np.array([s for s, _ in hist["train/fid"]], dtype=float)
        at = {k: np.interp(steps, *zip(*hist[f"train/{k}"])) if hist[f"train/{k}"] else np.full(len(steps), np.nan)
              for k in ("seconds", "teacher_forwards")}
        rows += [{"teacher": r.teacher, "method": r.method, "step": s, "fid": f, "seconds": sec, "teacher_forwards": tf}
                 for s, (_, f), sec, tf in zip(steps, hist["train/fid"], at["seconds"], at["teacher_forwards"])]
    if not rows:
        return pd.DataFrame(columns=["teacher", "method", "step", "fid", "seconds", "teacher_forwards"])
    return pd.DataFrame(rows).groupby(["teacher", "method", "step"], as_index=False).mean(numeric_only=True)


def plot_curves(curves: pd.DataFrame, teacher: str, out_dir: Path) -> list[Path]:
    """``<teacher>_train_fid_vs_seconds.png`` and ``..._vs_teacher_forwards.png``; none without curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves[curves.teacher == teacher]
    paths = []
    for x, label, name in AXES:
        if data.empty:
            break
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for method, grp in data.groupby("method"):
            grp = grp.sort_values("step")
            ax.plot(grp[x], grp["fid"], marker=".", label=method)
        ax.set(xscale="symlog" if x == "teacher_forwards" else "linear", yscale="log", xlabel=label,
               ylabel="quick FID during training", title=f"{teacher}: training")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{teacher}_{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def sample_grids(client, runs: pd.DataFrame, best: pd.DataFrame, teacher: str, out_dir: Path) -> pd.DataFrame:
    """Each method's logged sample grid per NFE (its best config's first seed), downloaded into
    ``out_dir/grids``: a frame method x NFE of file names relative to ``out_dir`` ('' if none)."""
    table = {}
    for method, grp in runs[runs.teacher == teacher].groupby("method"):
        run_id = grp.sort_values("seed").run_id.iloc[0]
        for nfe in sorted(best[(best.teacher == teacher) & (best.method == method)].nfe.astype(int)):
            name = f"grids/{re.sub(r'[^A-Za-z0-9_.-]', '_', f'{teacher}_{method}_nfe{nfe}')}.png"
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    local = client.download_artifacts(run_id, f"grids/nfe_{nfe}.png", tmp)
                except Exception:  # a run of an older version, or its artifacts are gone
                    continue
                (out_dir / "grids").mkdir(exist_ok=True)
                shutil.move(local, out_dir / name)
            table.setdefault(method, {})[nfe] = name
    return pd.DataFrame(table).T.sort_index(axis=1).fillna("")
