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
        # the UI opens on model training: the choice is stored before MLflow's app script runs
        head = page.index("localStorage.setItem('mlflow.workflowType_v1','\"machine_learning\"')")
        assert head < page.index("static/js/main.")
        req = urllib.request.Request(base + "/api/2.0/mlflow/experiments/search",
                                     data=json.dumps({"max_results": 10}).encode(),
                                     headers={"Content-Type": "application/json"})
        names = [e["name"] for e in json.load(urllib.request.urlopen(req, timeout=10))["experiments"]]
        assert "ui-test" in names
    finally:
        stop_group(proc)


def _ui_one_line(capfd, args) -> str:
    code = main(["ui", *args])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("bench: error: "), err
    return err[0]


def test_bench_ui_rejects_a_port_out_of_range(tmp_path, capfd):
    """Before: exit 0 after an 87-line OverflowError traceback in the server log."""
    for port in ("99999", "0", "-1"):
        line = _ui_one_line(capfd, ["--port", port, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
        assert f"--port {port} is not a TCP port; use 1..65535" in line


def test_bench_ui_says_when_the_port_is_taken(tmp_path, capfd, monkeypatch):
    """Before: exit 0, the bind error buried in the server log. The check before the start
    says so; a server that fails anyway (here: the check switched off) is caught by watching it."""
    import socket
    import tempfile

    from bench import ui

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the failed server's log stays there
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        line = _ui_one_line(capfd, ["--port", port, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
        assert f"cannot serve on 127.0.0.1:{port}: Address already in use; pick another --port" in line
        monkeypatch.setattr(ui, "check_port", lambda host, port: None)
        line = _ui_one_line(capfd, ["--port", port, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
        assert "the MLflow server did not start (exit " in line and "address already in use" in line, line
        assert f"its log: {tmp_path}" in line
