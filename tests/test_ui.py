"""`bench ui` serves the MLflow UI and API on 127.0.0.1 over the store `bench run` wrote."""
import json
import urllib.request

from bench.cli import main
from conftest import bench_ui, stop_group


def test_bench_ui_serves_the_runs(tmp_path, tracking_uri, capsys):
    assert main(["run", "--teacher", "gmm2d", "--nfe", "1", "--num-samples", "50", "--tracking-uri",
                 tracking_uri, "--experiment", "ui-test", "--quiet"]) == 0
    proc, base = bench_ui(tracking_uri, tmp_path)
    try:
        page = urllib.request.urlopen(base + "/", timeout=5).read().decode()
        assert "mlflow" in page.lower()
        req = urllib.request.Request(base + "/api/2.0/mlflow/experiments/search",
                                     data=json.dumps({"max_results": 10}).encode(),
                                     headers={"Content-Type": "application/json"})
        names = [e["name"] for e in json.load(urllib.request.urlopen(req, timeout=10))["experiments"]]
        assert "ui-test" in names
    finally:
        stop_group(proc)
