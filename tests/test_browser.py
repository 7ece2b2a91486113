"""A real browser (Debian's chromium, headless) finds the runs in the HTML report and in the
MLflow UI served by `bench ui`. .ci/run installs chromium; without it these tests skip."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.cli import main
from conftest import bench_ui, stop_group

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                "(.ci/run installs it with apt-get; install it to run browser tests)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("BENCH_SCREENSHOTS", ""))  # set to keep the screenshots


def _chromium(tmp_path, url: str, shot: Path) -> str:
    base = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000"]
    subprocess.run([*base, "--window-size=1400,1000", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120)
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    return dom.stdout


@pytest.fixture
def runs(tracking_uri):
    from mlflow.tracking import MlflowClient

    for method in ("ddim", "boot"):
        assert main(["run", "--teacher", "gmm2d", "--method", method, "--nfe", "1", "--num-samples", "50",
                     "--set", "spacing=trailing" if method == "ddim" else "iterations=3",
                     "--tracking-uri", tracking_uri, "--experiment", "browser", "--quiet",
                     "--no-system-metrics"]) == 0
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("browser")
    return exp.experiment_id, client.search_runs([exp.experiment_id])


def test_report_page_in_browser(runs, tracking_uri, tmp_path):
    from reports.report import build_report

    _, found = runs
    build_report("browser", tmp_path / "report", ("ddim", 50), tracking_uri, log=False)
    shot = (SHOTS if SHOTS.name else tmp_path) / "report.png"
    dom = _chromium(tmp_path, (tmp_path / "report" / "report.html").as_uri(), shot)
    assert all(r.info.run_id in dom for r in found) and "boot" in dom and "ddim" in dom
    assert shot.stat().st_size > 10_000


def test_mlflow_ui_in_browser(runs, tracking_uri, tmp_path):
    """The experiment's page, opened by a bare link in a new browser profile, is the training
    runs view (bench/ui_app.py; MLflow 3.17 alone would open the GenAI overview) and lists the
    runs by name; the compare view of two runs renders both, with fid_nfe1, fid_best and
    train_seconds."""
    import json
    import urllib.parse

    exp_id, found = runs
    assert sorted(r.info.run_name for r in found) == ["boot-gmm2d-s0", "ddim-gmm2d-s0"]
    proc, base = bench_ui(tracking_uri, tmp_path)
    try:
        shot = (SHOTS if SHOTS.name else tmp_path) / "mlflow_ui.png"
        dom = _chromium(tmp_path, f"{base}/#/experiments/{exp_id}", shot)
        assert all(r.info.run_name in dom for r in found), [r.info.run_name for r in found]
        assert "Detect Issues" not in dom  # a button of the GenAI overview, where MLflow's own app opens
        assert shot.stat().st_size > 10_000
        ids = urllib.parse.quote(json.dumps([r.info.run_id for r in found]))
        shot = (SHOTS if SHOTS.name else tmp_path) / "mlflow_compare.png"
        dom = _chromium(tmp_path, f"{base}/#/compare-runs?runs={ids}&experiments="
                                  f"{urllib.parse.quote(json.dumps([exp_id]))}", shot)
        assert all(r.info.run_name in dom for r in found)
        assert all(m in dom for m in ("fid_nfe1", "fid_best", "train_seconds"))
        assert shot.stat().st_size > 10_000
    finally:
        stop_group(proc)
