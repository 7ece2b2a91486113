"""The main table per teacher (BOOT paper Table 1 style) in Markdown, LaTeX, CSV and HTML."""
from __future__ import annotations

import math

import pandas as pd

from reports.collect import baseline_speed

# (column, source metric, better direction, format)
COLUMNS = [
    ("FID", "fid", "↓", "{:.3f}"), ("KID", "kid", "↓", "{:.4f}"),
    ("precision", "precision", "↑", "{:.3f}"), ("recall", "recall", "↑", "{:.3f}"),
    ("PSNR vs teacher (dB)", "teacher_psnr", "↑", "{:.1f}"), ("class acc.", "class_accuracy", "↑", "{:.3f}"),
    ("CLIP score", "clip_score", "↑", "{:.2f}"),
    ("s/image", "sample_seconds_per_image", "↓", "{:.2e}"),
    ("train s", "train_seconds", "↓", "{:.0f}"), ("teacher fwd", "teacher_forwards", "↓", "{:,.0f}"),
]

ONLY_WHERE_LOGGED = ("class_accuracy", "clip_score")


def _cell(mean: float, std: float, fmt: str, seeds: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if fmt == "{:.1f}" and mean > 150:  # PSNR of the teacher against itself: MSE ~ 0
        return "exact"
    text = fmt.format(mean)
    return f"{text} ± {fmt.format(std)}" if seeds > 1 and not math.isnan(std) else text


def main_table(best: pd.DataFrame, teacher: str, baseline: tuple[str, int]) -> tuple[pd.DataFrame, str]:
    """(display table, caption) for one teacher: rows method x NFE, best config per row; the
    speed-up is against ``baseline`` = (method, NFE)."""
    rows = best[best.teacher == teacher]
    base = baseline_speed(best, teacher, *baseline)
    out = []
    for _, r in rows.iterrows():
        seeds = int(r["seeds"])
        row = {"method": r["method"], "NFE": int(r["nfe"])}
        for name, key, arrow, fmt in COLUMNS:
            row[f"{name} {arrow}"] = _cell(r.get(f"{key}_mean"), r.get(f"{key}_std", float("nan")), fmt, seeds)
        speed = base / r["sample_seconds_per_image_mean"] if base else float("nan")
        row[f"speed-up vs {baseline[0]}-{baseline[1]} ↑"] = "–" if math.isnan(speed) else f"{speed:.1f}x"
        row["seeds"] = seeds
        out.append(row)
    table = pd.DataFrame(out)
    for name, key, arrow, _ in COLUMNS:  # a column no run of this teacher has (class accuracy of
        col = f"{name} {arrow}"           # unconditional teachers) is left out, not shown as dashes
        if key in ONLY_WHERE_LOGGED and col in table and (table[col] == "–").all():
            table = table.drop(columns=col)
    n = ", ".join(sorted({str(int(v)) for v in rows["n"]}))
    extractor = ", ".join(sorted(set(rows["extractor"])))
    caption = (f"{teacher}: FID/KID/precision/recall on {extractor} features, n = {n}; best config per "
               f"method and NFE; mean ± std over seeds where there are several")
    return table, caption


def to_markdown(table: pd.DataFrame, caption: str) -> str:
    head = "| " + " | ".join(table.columns) + " |"
    sep = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([f"**{caption}**", "", head, sep, *body, ""])


def to_latex(table: pd.DataFrame, caption: str) -> str:
    esc = lambda s: str(s).replace("%", r"\%").replace("_", r"\_").replace("±", r"$\pm$") \
        .replace("↓", r"$\downarrow$").replace("↑", r"$\uparrow$")  # noqa: E731
    lines = [r"\begin{table}", r"\centering", r"\begin{tabular}{" + "l" * len(table.columns) + "}", r"\toprule",
             " & ".join(esc(c) for c in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in table.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + esc(caption) + "}", r"\end{table}", ""]
    return "\n".join(lines)
