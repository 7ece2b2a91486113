"""FID against NFE, sampling wall-clock and distillation cost (with the Pareto front)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten on both cost and FID (lower is better for both), sorted by cost."""
    front, best = [], float("inf")
    for cost, fid in sorted(points):
        if fid < best:
            front.append((cost, fid))
            best = fid
    return front


def plot_teacher(best: pd.DataFrame, teacher: str, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = best[best.teacher == teacher]
    paths = []
    specs = [("nfe", "NFE (network evaluations)", "fid_vs_nfe"),
             ("sample_seconds_per_image_mean", "sampling seconds per image", "fid_vs_wallclock"),
             ("cost", "distillation cost: train seconds (none: shown at 1)", "fid_vs_cost")]
    rows = rows.assign(cost=rows["train_seconds_mean"].fillna(0).clip(lower=1))
    for x, label, name in specs:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        # cost only means something at equal NFE: compare the one-step results
        data = rows[rows.nfe == rows.nfe.min()] if name == "fid_vs_cost" else rows
        for method, grp in data.groupby("method"):
            grp = grp.sort_values(x)
            ax.plot(grp[x], grp["fid_mean"], marker="o", label=method)
        if name == "fid_vs_cost":
            front = pareto_front(list(zip(data["cost"], data["fid_mean"])))
            ax.plot(*zip(*front), "k--", marker="s", mfc="none", ms=10, alpha=0.5, label="Pareto front")
        nfe_note = f", NFE {int(rows.nfe.min())}" if name == "fid_vs_cost" else ""
        ax.set(xscale="log", yscale="log", xlabel=label, ylabel="FID", title=teacher + nfe_note)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{teacher}_{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
