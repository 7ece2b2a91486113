"""Screenshots (headless Debian chromium) of what a user reads after a run: the experiment's
page in the MLflow UI, the compare view of its runs, and the HTML report.

    python scripts/ui_screenshots.py --tracking-uri sqlite:///$PWD/mlflow.db --experiment digits-demo \
        --report report/report.html --out reports/screenshots

The UI is `bench ui` on a free port, stopped by its own process group afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

TRAINING = "workflowType=machine_learning"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--virtual-time-budget=30000"]


def shoot(url: str, out: Path, size: str, profile: str) -> None:
    subprocess.run([shutil.which("chromium"), *FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                    f"--screenshot={out}", url], capture_output=True, timeout=180)
    print(f"{out} ({out.stat().st_size} bytes)")


def serve(uri: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "ui", "--port", str(port), "--tracking-uri", uri],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(base + "/", timeout=5)
            return proc, base
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit("bench ui did not come up")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--report", help="report.html to screenshot too")
    p.add_argument("--out", default="reports/screenshots")
    args = p.parse_args()
    from mlflow.tracking import MlflowClient

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(args.tracking_uri)
    exp = client.get_experiment_by_name(args.experiment)
    runs = [r for r in client.search_runs([exp.experiment_id]) if "method" in r.data.params]
    ids = urllib.parse.quote(json.dumps([r.info.run_id for r in runs]))
    with tempfile.TemporaryDirectory() as profile:
        if args.report:
            shoot(Path(args.report).resolve().as_uri(), out / "report_digits.png", "1400,3000", profile)
        proc, base = serve(args.tracking_uri)
        try:
            # MLflow 3.17 picks GenAI or model training from this parameter (then the browser's last choice)
            shoot(f"{base}/#/experiments/{exp.experiment_id}?{TRAINING}", out / "mlflow_ui_runs.png", "1600,900",
                  profile)
            exps = urllib.parse.quote(json.dumps([exp.experiment_id]))
            shoot(f"{base}/#/compare-runs?runs={ids}&experiments={exps}&{TRAINING}", out / "mlflow_ui_compare.png",
                  "1600,2200", profile)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)


if __name__ == "__main__":
    main()
