"""`bench ui` serves the MLflow UI and API on 127.0.0.1 over the store `bench run` wrote."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from bench.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bench_ui_serves_the_runs(tmp_path, tracking_uri, capsys):
    assert main(["run", "--teacher", "gmm2d", "--nfe", "1", "--num-samples", "50", "--tracking-uri",
                 tracking_uri, "--experiment", "ui-test", "--quiet"]) == 0
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "ui", "--port", str(port), "--tracking-uri",
                             tracking_uri], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while True:
            try:
                page = urllib.request.urlopen(base + "/", timeout=5).read().decode()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "mlflow server did not come up"
                time.sleep(1)
        assert "mlflow" in page.lower()
        req = urllib.request.Request(base + "/api/2.0/mlflow/experiments/search",
                                     data=json.dumps({"max_results": 10}).encode(),
                                     headers={"Content-Type": "application/json"})
        names = [e["name"] for e in json.load(urllib.request.urlopen(req, timeout=10))["experiments"]]
        assert "ui-test" in names
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
