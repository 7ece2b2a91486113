"""The team's store (issue #20; docs/cluster.md): an MLflow tracking server on PostgreSQL with its
artifacts on a shared folder, written by a 2-worker run and a sweep of 2-worker trials.

The test starts Debian's PostgreSQL on 127.0.0.1 in a temporary data folder (as the postgres
user where it runs as root: initdb refuses root) and stops it after; it is skipped, saying why,
where PostgreSQL or psycopg2 is missing.
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import free_port, run_bench, start_server, stop_group
from test_sweep import BENCH, ENV, children, tiny_spec

PG_BIN = Path("/usr/lib/postgresql")


def _pg_tool(name: str) -> str:
    found = shutil.which(name) or next((str(p) for p in sorted(PG_BIN.glob(f"*/bin/{name}"))), None)
    if not found:
        pytest.skip(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return found


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture
def postgres():
    """A PostgreSQL server on 127.0.0.1 with an empty database ``mlflow``; yields its URI."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary)")
    initdb, pg_ctl, psql = _pg_tool("initdb"), _pg_tool("pg_ctl"), _pg_tool("psql")
    if os.geteuid() == 0 and subprocess.run(["id", "postgres"], capture_output=True).returncode:
        pytest.skip("running as root without a postgres user to run PostgreSQL as")
    root = Path(tempfile.mkdtemp(prefix="bench-pg-"))  # outside pytest's root-only folders
    data, port = root / "data", free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    try:
        for cmd in ([initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                    [pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60",
                     "-o", f"-h 127.0.0.1 -p {port} -k {root} -F", "start"],
                    [psql, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "CREATE DATABASE mlflow"]):
            done = subprocess.run(_as_postgres(cmd), capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{' '.join(cmd[:2])}: {done.stderr[-2000:]}"
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"  # SQLAlchemy 2.1: psycopg 3 by default
    finally:
        subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_multi_worker_run_and_sweep_against_a_postgres_backed_server(postgres, tmp_path):
    from mlflow.tracking import MlflowClient

    shared = tmp_path / "shared-artifacts"  # on a cluster: a folder every node mounts
    port = free_port()
    server = start_server([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres,
                           "--artifacts-destination", shared.as_uri(), "--host", "127.0.0.1",
                           "--port", str(port), "--workers", "1"], tmp_path, f"http://127.0.0.1:{port}/health",
                          timeout=180)
    uri = f"http://127.0.0.1:{port}"
    try:
        done = run_bench(["run", "--method", "boot", "--teacher", "gmm2d", "--nfe", "1", "--num-samples", "100",
                          "--metrics", "fid", "--set", "iterations=20", "--set", "batch_size=16", "--set",
                          "log_every=1", "--workers", "2", "--tracking-uri", uri, "--experiment", "team",
                          "--quiet"], tmp_path, timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("team").experiment_id])
        assert run.info.status == "FINISHED" and run.data.params["workers"] == "2"
        assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 20
        assert (run.info.artifact_uri or "").startswith("mlflow-artifacts:")  # served, not a client path
        assert list(shared.rglob("student.safetensors"))  # the run's artifacts landed in the shared folder

        spec = tiny_spec(tmp_path, num_samples=2, max_concurrent=1, resources="{workers: 2, cpus_per_worker: 0.5}",
                         scheduler="none")
        out = subprocess.run(BENCH + ["sweep", str(spec), "--tracking-uri", uri, "--quiet"], env=ENV,
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        _, parent, kids = children(uri)
        assert len(kids) == 2 and all(k.info.status == "FINISHED" and "fid" in k.data.metrics for k in kids)
        assert {k.data.params["workers"] for k in kids} == {"2"}
        assert len(list(shared.rglob("student.safetensors"))) == 3
    finally:
        stop_group(server)
