"""Read runs out of MLflow into one pandas frame: a row per (run, NFE). Reports read only this."""
from __future__ import annotations

import hashlib
import json
from typing import Optional

import pandas as pd

PER_NFE = ("fid", "kid", "precision", "recall", "teacher_psnr", "sample_seconds_per_image", "class_accuracy",
           "clip_score")
PER_RUN = ("train_seconds", "teacher_forwards", "distill_seconds")
RENAMED = {"teacher_forwards": "teacher_nfe"}  # metric -> its name in runs of older versions


def collect(client, experiment: str, filter_string: str = "") -> pd.DataFrame:
    """Finished ``bench run`` runs of ``experiment`` (MLflow filter syntax in ``filter_string``)."""
    from bench.errors import BenchError

    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise BenchError(f"no MLflow experiment {experiment!r}; known: {names}")
    rows = []
    for run in client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=5000):
        p, m = run.data.params, run.data.metrics
        if run.info.status != "FINISHED" or "method" not in p:
            continue  # report runs, failed or unfinished runs
        config = {k: v for k, v in p.items() if k.startswith("method.")}
        # a method's variants (a solver's scheduler) are rows of their own: the label says which
        base = {"run_id": run.info.run_id, "method": p.get("label") or p["method"], "teacher": p.get("teacher", ""),
                "seed": p.get("seed"), "n": int(p.get("n", 0)), "extractor": p.get("feature_extractor", ""),
                "config": hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8],
                "git_commit": run.data.tags.get("git_commit", ""), "start_time": run.info.start_time,
                **{k: _run_metric(m, k) for k in PER_RUN}}
        per_nfe: dict[int, dict] = {}
        for key in PER_NFE:
            for point in client.get_metric_history(run.info.run_id, key):
                per_nfe.setdefault(point.step, {})[key] = point.value
        rows += [{**base, "nfe": nfe, **vals} for nfe, vals in per_nfe.items()]
    return pd.DataFrame(rows)


def _run_metric(metrics: dict, key: str) -> float:
    """A per-run metric, read under its older name where a run predates the rename; training-free
    runs log no training cost (0), and a missing distill time stays unknown (NaN)."""
    if key in metrics:
        return metrics[key]
    if RENAMED.get(key) in metrics:
        return metrics[RENAMED[key]]
    return float("nan") if key == "distill_seconds" else 0.0


RANKED_BY = ("fid_mean", "kid_mean")  # the best config: lowest FID, else lowest KID, else the first


def best_per_method_nfe(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (teacher, method, config, NFE), then per (teacher, method,
    NFE) the config with the lowest mean FID (KID where no config has an FID). Metrics a run
    did not log (``--metrics kid``, runs of older versions) are empty (NaN) columns."""
    if df.empty:
        return df
    keys = ["teacher", "method", "config", "nfe"]
    metrics = list(PER_NFE + PER_RUN)
    df = df.reindex(columns=list(dict.fromkeys([*df.columns, *metrics])))
    df[metrics] = df[metrics].astype(float)
    agg = df.groupby(keys)[metrics].agg(["mean", "std"])
    agg.columns = [f"{a}_{b}" for a, b in agg.columns]
    agg["seeds"] = df.groupby(keys)["seed"].nunique()
    agg["n"] = df.groupby(keys)["n"].first()
    agg["extractor"] = df.groupby(keys)["extractor"].first()
    agg = agg.reset_index()
    ranked = agg.sort_values(list(RANKED_BY), na_position="last", kind="stable")
    best = ranked.groupby(["teacher", "method", "nfe"], sort=False).head(1)
    return best.sort_values(["teacher", "method", "nfe"]).reset_index(drop=True)


def baseline_speed(best: pd.DataFrame, teacher: str, method: str, steps: int) -> Optional[float]:
    """Seconds per image of the baseline (e.g. the teacher's own DDIM) at ``steps``, if logged."""
    row = best[(best.teacher == teacher) & (best.method == method) & (best.nfe == steps)]
    return None if row.empty else float(row["sample_seconds_per_image_mean"].iloc[0])
