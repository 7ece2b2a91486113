"""What a run's page in the MLflow UI shows at a glance: its name, single-value metrics the runs
table sorts on, and its result table in Markdown as the run's description (MLflow's note)."""
from __future__ import annotations

import math

NOTE_TAG = "mlflow.note.content"  # what the UI shows (and edits) as the run's description


def run_name(label: str, teacher: str, seed: int) -> str:
    """``boot-digits-s0``, ``solver:unipc-cifar10-s1``: what ran, on what, with which seed."""
    return f"{label}-{teacher}-s{seed}"


def summary_metrics(rows: list[dict], cost: dict[str, float]) -> dict[str, float]:
    """``fid_nfe<K>`` per evaluated NFE, ``fid_best`` (and its NFE) and ``train_seconds`` (0 for
    training-free methods): one value each, beside the NFE-indexed ``fid``."""
    fids = {int(r["nfe"]): float(r["fid"]) for r in rows if not math.isnan(float(r.get("fid", math.nan)))}
    out = {f"fid_nfe{k}": v for k, v in fids.items()}
    if fids:
        best = min(fids, key=fids.get)
        out.update(fid_best=fids[best], fid_best_nfe=float(best))
    out["train_seconds"] = float(cost.get("train_seconds", 0.0))
    return out


def _fmt(value, spec: str) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(value) else format(value, spec)


def note(label: str, teacher: str, rows: list[dict], cost: dict[str, float], extractor: str) -> str:
    """The run's result table in Markdown, with its distillation cost."""
    classes = any(_fmt(r.get("class_accuracy"), ".3f") != "–" for r in rows)  # conditional teachers
    lines = [f"**{label}** on **{teacher}**; FID on `{extractor}` features, n = {rows[0]['n'] if rows else '–'}",
             "", "| NFE | FID | KID | precision | recall | PSNR vs teacher (dB) | s/image |"
             + (" class acc. |" if classes else ""), "|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if classes else "")]
    for r in rows:
        lines.append(f"| {r['nfe']} | {_fmt(r.get('fid'), '.3f')} | {_fmt(r.get('kid'), '.4f')} | "
                     f"{_fmt(r.get('precision'), '.3f')} | {_fmt(r.get('recall'), '.3f')} | "
                     f"{_fmt(r.get('teacher_psnr'), '.1f')} | {_fmt(r.get('sample_seconds_per_image'), '.2e')} |"
                     + (f" {_fmt(r.get('class_accuracy'), '.3f')} |" if classes else ""))
    if cost.get("train_seconds"):
        lines += ["", f"Distillation: {cost['train_seconds']:.0f} s, "
                      f"{cost.get('teacher_forwards', 0):,.0f} teacher forwards."]
    else:
        lines += ["", "Training-free: no distillation cost."]
    return "\n".join(lines)


def log_summary(tracker, label: str, teacher: str, rows: list[dict], cost: dict, extractor: str) -> None:
    """Single-value metrics for the runs table, and the result table as the run's description."""
    tracker.log_metrics(summary_metrics(rows, cost))
    tracker.set_tags({NOTE_TAG: note(label, teacher, rows, cost, extractor)})
