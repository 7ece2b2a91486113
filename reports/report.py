"""``bench report``: tables, plots and an HTML page from what MLflow holds, logged back to it."""
from __future__ import annotations

import datetime
import html
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from bench.errors import BenchError
from reports.collect import best_per_method_nfe, collect
from reports.curves import best_configs, plot_curves, sample_grids, training_curves
from reports.plots import plot_teacher
from reports.tables import main_table, to_latex, to_markdown

FORMATS = ("md", "tex", "csv", "html")


def build_report(experiment: str, out_dir: Path, baseline: tuple[str, int], tracking_uri: Optional[str] = None,
                 filter_string: str = "", formats: Sequence[str] = FORMATS, log: bool = True) -> dict:
    """Write the report files to ``out_dir``; returns {teacher: display table}. Speed-ups are
    against ``baseline`` = (method, NFE), e.g. the teacher's DDIM-50."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from bench.tracking import mlflow_run, resolve_uri, version_tags

    bad = set(formats) - set(FORMATS)
    if bad:
        raise BenchError(f"unknown report format(s) {', '.join(sorted(bad))}; use {', '.join(FORMATS)}")
    uri = resolve_uri(tracking_uri)
    client = MlflowClient(uri)
    raw = collect(client, experiment, filter_string)
    if raw.empty:
        raise BenchError(f"experiment {experiment!r} holds no finished bench runs; run `bench run` first")
    best = best_per_method_nfe(raw)
    _make_folder(out_dir)
    chosen = best_configs(raw, best)
    curves = training_curves(client, chosen)
    tables, sections = {}, []
    for teacher in sorted(best.teacher.unique()):
        table, caption = main_table(best, teacher, baseline)
        tables[teacher] = table
        if "md" in formats:
            (out_dir / f"{teacher}.md").write_text(to_markdown(table, caption))
        if "tex" in formats:
            (out_dir / f"{teacher}.tex").write_text(to_latex(table, caption))
        if "csv" in formats:
            best[best.teacher == teacher].to_csv(out_dir / f"{teacher}.csv", index=False)
        plots = plot_teacher(best, teacher, out_dir) + plot_curves(curves, teacher, out_dir)
        grids = sample_grids(client, chosen, best, teacher, out_dir) if "html" in formats else None
        sections.append((teacher, caption, table, plots, grids))
    if "html" in formats:
        _write_html(out_dir / "report.html", experiment, sections, raw, version_tags())
    if log:
        with mlflow_run(experiment, uri, run_name="report", tags={"bench.report": "true"}):
            mlflow.log_artifacts(str(out_dir), artifact_path="report")
    return tables


def _make_folder(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise BenchError(f"--out {out_dir} is a file; give a folder for the report's files")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create the report folder {out_dir}: {exc.strerror}") from None


def _grid_table(teacher: str, grids) -> list[str]:
    """Sample grids, methods down and NFE across, each from the method's best config."""
    if grids is None or grids.empty:
        return []
    head = "".join(f"<th>NFE {int(k)}</th>" for k in grids.columns)
    rows = "".join(f"<tr><th>{html.escape(m)}</th>" + "".join(
        f'<td><img class="grid" src="{html.escape(v)}" alt="{html.escape(m)} NFE {int(k)}"></td>' if v else "<td>–</td>"
        for k, v in row.items()) + "</tr>" for m, row in grids.iterrows())
    return [f"<h3>{html.escape(teacher)}: samples (each cell: a run's first 64 samples; equal seeds give equal noise)</h3>",
            f'<table class="grids"><tr><th>method</th>{head}</tr>{rows}</table>']


def _write_html(path: Path, experiment: str, sections, raw: pd.DataFrame, tags: dict) -> None:
    parts = [f"<h1>distill-bench report: {html.escape(experiment)}</h1>",
             f"<p>generated {datetime.datetime.now().isoformat(timespec='seconds')} from "
             f"{raw.run_id.nunique()} runs (git commits: {html.escape(', '.join(sorted(set(raw.git_commit))))})</p>"]
    for teacher, caption, table, plots, grids in sections:
        parts += [f"<h2>{html.escape(teacher)}</h2>", f"<p>{html.escape(caption)}</p>",
                  table.to_html(index=False, classes="results", border=0)]
        parts += [f'<img src="{p.name}" alt="{html.escape(p.stem)}">' for p in plots]
        parts += _grid_table(teacher, grids)
    prov = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in sorted(tags.items()))
    runs = raw[["run_id", "method", "teacher", "seed", "start_time"]].drop_duplicates("run_id")
    runs = runs.assign(start_time=pd.to_datetime(runs.start_time, unit="ms"))
    parts += ["<h2>Runs</h2>", runs.to_html(index=False, border=0, classes="runs"),
              "<h2>Provenance (report builder)</h2>", f"<table>{prov}</table>"]
    style = "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}" \
            "td,th{padding:3px 8px;border-bottom:1px solid #ddd}img{max-width:32%}" \
            "img.grid{width:160px;max-width:none;image-rendering:pixelated}</style>"
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(experiment)}</title>"
                    f"{style}</head><body>{''.join(parts)}</body></html>")
