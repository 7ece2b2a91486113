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
    """FID against NFE, sampling wall-clock and distillation cost; KID where the runs logged no
    FID (on a linear axis: the unbiased KID can be negative); nothing where they logged neither.
    A plot whose points are all missing is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = best[best.teacher == teacher]
    metric = next((m for m in ("fid", "kid") if rows[f"{m}_mean"].notna().any()), None)
    if metric is None:
        return []
    y, paths = f"{metric}_mean", []
    specs = [("nfe", "NFE (network evaluations)", "vs_nfe"),
             ("sample_seconds_per_image_mean", "sampling seconds per image", "vs_wallclock"),
             ("cost", "distillation cost: train seconds (none: shown at 1)", "vs_cost")]
    rows = rows.assign(cost=rows["train_seconds_mean"].fillna(0).clip(lower=1))
    for x, label, name in specs:
        # cost only means something at equal NFE: compare the one-step results
        data = rows[rows.nfe == rows.nfe.min()] if name == "vs_cost" else rows
        data = data[data[x].notna() & data[y].notna()]
        if data.empty:
            continue
        methods = sorted(data["method"].unique())
        many = len(methods) > 6  # a legend beside the axes, and a wider figure to hold it
        fig, ax = plt.subplots(figsize=(7.2 if many else 5, 3.6))
        for i, (method, grp) in enumerate(data.groupby("method")):
            grp = grp.sort_values(x)
            ax.plot(grp[x], grp[y], label=method, **_style(i, method))
        front = pareto_front(list(zip(data["cost"], data[y]))) if name == "vs_cost" else []
        if front:
            ax.plot(*zip(*front), "k--", marker="s", mfc="none", ms=10, alpha=0.5, label="Pareto front")
        nfe_note = f", NFE {int(rows.nfe.min())}" if name == "vs_cost" else ""
        ax.set(xscale="log", yscale="log" if metric == "fid" else "linear", xlabel=label,
               ylabel=metric.upper(), title=teacher + nfe_note)
        ax.legend(fontsize=7 if many else 8, **({"loc": "upper left", "bbox_to_anchor": (1.01, 1)} if many else {}))
        fig.tight_layout()
        path = out_dir / f"{teacher}_{metric}_{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


MARKERS = "osD^vPX*<>"


def _style(i: int, method: str) -> dict:
    """Line style of the i-th method: 20 colours and 10 markers before any pair repeats; a
    method's variants (``solver:unipc``) are dashed, so the training-free frontier reads apart
    from the distilled students."""
    import matplotlib

    return {"color": matplotlib.colormaps["tab20"](i % 20), "marker": MARKERS[i % len(MARKERS)], "ms": 4,
            "linestyle": "--" if ":" in method else "-"}
