"""Reliability of tracking: a tracking server that dies mid-run, four runs on one sqlite store.

A tracking server killed mid-run loses nothing; concurrent runs on one store all land. The server is a real `mlflow server`
on 127.0.0.1 (a free port), stopped by its own process group, as a dead host would be.
"""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.spool import SpooledRun, pending, spooled_status, sync
from conftest import bench_env, free_port, start_server, stop_group


def _server(root: Path, port: int) -> subprocess.Popen:
    return start_server([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                         f"sqlite:///{root / 'server.db'}", "--host", "127.0.0.1", "--port", str(port),
                         "--workers", "1"], root, f"http://127.0.0.1:{port}/health")


def _stop(proc: subprocess.Popen) -> None:
    stop_group(proc, signal.SIGKILL)  # the whole server (it forks workers), as a dead host


def test_server_dies_mid_run_nothing_is_lost(tmp_path):
    from mlflow.tracking import MlflowClient

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _server(tmp_path, port)
    work = tmp_path / "work"
    work.mkdir()
    try:
        # MLflow's own retries off: the fallback, not the retry schedule, is under test
        run = subprocess.Popen(
            [sys.executable, "-m", "bench", "run", "--method", "boot", "--teacher", "gmm2d", "--nfe", "1",
             "--num-samples", "200", "--metrics", "fid", "--set", "iterations=120", "--set", "batch_size=32",
             "--set", "log_every=5", "--set", "checkpoint_every=10", "--tracking-uri", uri, "--quiet"],
            cwd=work, env=bench_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0"), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240
        while not list((work / "checkpoints").glob("*/checkpoint_*.pt")):
            assert run.poll() is None and time.time() < deadline, run.communicate()
            time.sleep(0.05)
    finally:
        _stop(server)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    (workdir,) = (work / "checkpoints").iterdir()
    spool = workdir / "spool"
    assert f"bench sync {spool.resolve()}" in err or f"bench sync {spool}" in err, err
    assert "MLflow store failed during the run" in err and "student included" in err
    events = [json.loads(x) for x in (spool / "events.jsonl").read_text().splitlines()]
    assert spooled_status(spool) == "FINISHED" and pending(spool) == len(events)
    assert any(e["kind"] == "metrics" and "fid" in e["data"] for e in events)
    assert list(spool.glob("artifacts/*/student.safetensors"))

    server = _server(tmp_path, port)  # the store comes back
    try:
        synced = subprocess.run([sys.executable, "-m", "bench", "sync"], cwd=work, env=bench_env(),
                                capture_output=True, text=True, timeout=120)
        assert synced.returncode == 0 and f"{len(events)} events synced" in synced.stdout, synced.stderr
        assert pending(spool) == 0
        client = MlflowClient(uri)
        r = client.get_run(workdir.name)
        assert r.info.status == "FINISHED" and "fid" in r.data.metrics
        assert r.data.metrics["train_iterations"] == 120
        steps = sorted(m.step for m in client.get_metric_history(workdir.name, "train/loss"))
        assert steps == list(range(5, 121, 5))  # every point, before and after the server died
        names = {f.path for f in client.list_artifacts(workdir.name)}
        assert {"student.safetensors", "summary.csv", "config.json"} <= names
        again = subprocess.run([sys.executable, "-m", "bench", "sync", str(spool)], cwd=work, env=bench_env(),
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "0 events synced" in again.stdout  # never twice
    finally:
        _stop(server)


def test_sync_against_a_dead_store_says_where_data_waits(tmp_path):
    class Dead:
        def log_batch(self, *a, **k):
            raise ConnectionError("Connection refused")

        set_terminated = log_artifacts = log_batch

    tracker = SpooledRun(Dead(), "r1", "http://127.0.0.1:9", tmp_path)
    tracker.log_params({"a": 1})
    tracker.log_metrics({"loss": 0.5}, step=3)
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "student.safetensors").write_bytes(b"x")
    tracker.log_artifacts(tmp_path / "art")
    assert tracker.finish("FINISHED") is False and tracker.offline == "Connection refused"
    assert pending(tmp_path / "spool") == 4
    assert (tmp_path / "spool" / "artifacts" / "0000" / "student.safetensors").read_bytes() == b"x"
    with pytest.raises(BenchError, match=r"cannot sync .*spool.* 4 events wait there"):
        sync(tmp_path / "spool", client=Dead())


def test_four_concurrent_runs_on_one_sqlite_store(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'shared.db'}"  # fresh: the schema is created under contention too
    procs = [subprocess.Popen([sys.executable, "-m", "bench", "run", "--method", "boot", "--teacher", "gmm2d",
                               "--nfe", "1", "--num-samples", "100", "--metrics", "fid", "--seed", str(seed),
                               "--set", "iterations=40", "--set", "batch_size=16", "--set", "log_every=1",
                               "--tracking-uri", uri, "--quiet"], cwd=tmp_path, env=bench_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in range(4)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0 and "warning" not in err, err  # nothing fell back to a spool
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("distill-bench").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2", "3"]
    for r in runs:
        assert r.info.status == "FINISHED" and "fid" in r.data.metrics
        assert len(client.get_metric_history(r.info.run_id, "train/loss")) == 40
        assert {"student.safetensors", "summary.csv"} <= {f.path for f in client.list_artifacts(r.info.run_id)}
    assert not list(tmp_path.glob("checkpoints/*/spool"))
