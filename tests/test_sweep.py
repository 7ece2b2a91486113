"""Sweeps end to end: a local sweep, a two-node Ray cluster on loopback, kill -9 and --resume.

Each test runs ``bench sweep`` as a subprocess (Ray's processes stay out of pytest's) on the
exact Gaussian teacher with an MLP student, so a trial takes a few seconds.
"""
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import free_port, stop_group

BENCH = [sys.executable, "-m", "bench"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true",
       "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def tiny_spec(tmp_path: Path, **over) -> Path:
    fields = {"name": "tiny", "method": "boot", "teacher": "gaussian",
              "run": "{num_samples: 200, metrics: [fid], fidelity_steps: 0, experiment: sweeps}",
              "set": "{iterations: 120, eval_every: 30, eval_samples: 100, mlp_width: 64, log_every: 10}",
              "metric": "fid", "nfe": 1, "space": "{lr: {loguniform: [1.0e-4, 1.0e-2]}}",
              "search": "optuna", "scheduler": "{type: asha, grace_period: 30, reduction_factor: 2}",
              "num_samples": 4, "max_concurrent": 2, "resources": "{cpu: 1}",
              "storage_path": str(tmp_path / "results"), **over}
    path = tmp_path / "spec.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in fields.items()))
    return path


def children(uri: str, experiment: str = "sweeps"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    parent = parents[0]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return client, parent, kids


def test_local_sweep_nests_trials_and_tags_the_best(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run(BENCH + ["sweep", str(tiny_spec(tmp_path)), "--tracking-uri", uri, "--quiet"],
                         env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "sweep tiny: 4 trials" in out.stdout and "best fid@1 =" in out.stdout
    client, parent, kids = children(uri)
    assert len(kids) == 4 and len({k.data.tags["sweep.trial_id"] for k in kids}) == 4
    assert sorted(k.info.run_name for k in kids) == ["tiny-t01", "tiny-t02", "tiny-t03", "tiny-t04"]
    finished = [k for k in kids if k.info.status == "FINISHED"]
    stopped = [k for k in kids if k.info.status == "KILLED"]
    assert finished and len(finished) + len(stopped) == 4
    assert all(k.data.tags["sweep.stopped_by"] == "scheduler (ASHA)" for k in stopped)
    assert all("fid" not in k.data.metrics and "train/fid" in k.data.metrics for k in stopped)
    best = [k for k in kids if k.data.tags["sweep.best"] == "true"]
    assert len(best) == 1 and best[0].info.run_id == parent.data.tags["sweep.best_run_id"]
    assert best[0].data.metrics["fid"] == min(k.data.metrics["fid"] for k in finished)
    assert parent.data.metrics["best_fid_nfe1"] == best[0].data.metrics["fid"]
    assert parent.data.metrics["sweep/stopped_early"] == len(stopped)
    assert float(best[0].data.params["method.lr"]) == float(parent.data.tags["best.lr"])
    assert parent.data.params["sweep.space.lr"] == "loguniform(0.0001, 0.01)"
    # each trial logged the same params as a bench run, the searched one included
    assert {"method", "teacher", "method.lr", "method.delta", "n"} <= set(best[0].data.params)
    # a second sweep in the same folder without --resume is refused in one line
    again = subprocess.run(BENCH + ["sweep", str(tiny_spec(tmp_path)), "--tracking-uri", uri],
                           env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "add --resume" in again.stderr


def _ray_node(*args: str) -> subprocess.Popen:
    """``ray start --block`` in its own process group: stopping it stops that node only
    (``ray stop`` would stop every Ray process on the machine)."""
    ray = str(Path(sys.executable).with_name("ray"))
    return subprocess.Popen([ray, "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                             "--disable-usage-stats", *args], env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for_nodes(address: str, n: int, timeout: float = 90) -> None:
    ray = str(Path(sys.executable).with_name("ray"))
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run([ray, "status", f"--address={address}"], env=ENV, capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.count("node_") >= n:
            return
        time.sleep(2)
    pytest.fail(f"the Ray cluster at {address} did not reach {n} nodes: {out.stdout[-500:]} {out.stderr[-500:]}")


def test_two_node_cluster_on_loopback(tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    head = _ray_node("--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}")
    worker = None
    try:
        _wait_for_nodes(address, 1)
        worker = _ray_node(f"--address={address}")
        _wait_for_nodes(address, 2)
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        spec = tiny_spec(tmp_path, scheduler="none", num_samples=2)
        out = subprocess.run(BENCH + ["sweep", str(spec), "--address", address, "--tracking-uri", uri, "--quiet"],
                             env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        _, parent, kids = children(uri)
        assert len(kids) == 2 and all(k.info.status == "FINISHED" for k in kids)
        # one CPU per node and two concurrent one-CPU trials: both nodes ran a trial
        assert len({k.data.tags["sweep.node_id"] for k in kids}) == 2
        assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/completed"] == 2
    finally:
        for node in (worker, head):
            if node is not None:
                stop_group(node)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Ray's, started by the driver), from ``ps``."""
    table = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    kids: dict[int, list[int]] = {}
    for line in table.splitlines():
        child, parent = map(int, line.split())
        kids.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _mid_training(client, run_id: str) -> bool:
    """Past its second quick FID (so a checkpoint exists) and far from the end (3000 steps)."""
    fids = client.get_metric_history(run_id, "train/fid")
    return len(fids) >= 2 and max(m.step for m in fids) <= 1000


def _wait_mid_sweep(uri: str, proc: subprocess.Popen, timeout: float = 240):
    """Until one trial has finished and the next has reported a quick FID after its first
    checkpoint (so its Tune checkpoint holds training state)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the sweep ended before it could be killed"
        try:
            client, parent, kids = children(uri)
        except Exception:  # the store or the runs do not exist yet
            time.sleep(1)
            continue
        finished = [k for k in kids if k.info.status == "FINISHED"]
        running = [k for k in kids if k.info.status == "RUNNING" and _mid_training(client, k.info.run_id)]
        if finished and running:
            return parent, kids, running[0]
        time.sleep(0.5)
    pytest.fail("the sweep did not reach the middle of its second trial in time")


def test_kill_the_driver_then_resume(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = tiny_spec(tmp_path, scheduler="none", num_samples=3, max_concurrent=1, search="random",
                     set="{iterations: 3000, eval_every: 100, eval_samples: 100, mlp_width: 64, log_every: 20}")
    cmd = BENCH + ["sweep", str(spec), "--tracking-uri", uri, "--quiet"]
    proc = subprocess.Popen(cmd, env=ENV, cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        parent, kids, interrupted = _wait_mid_sweep(uri, proc)
        family = _descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 the driver (and its local Ray)
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    client, _, _ = children(uri)
    assert client.get_run(interrupted.info.run_id).info.status != "FINISHED", "killed too late"
    before = {k.info.run_id: k for k in kids}
    loss_before = client.get_metric_history(interrupted.info.run_id, "train/loss")
    out = subprocess.run(cmd + ["--resume"], env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    _, parent_after, kids_after = children(uri)
    assert parent_after.info.run_id == parent.info.run_id and parent_after.info.status == "FINISHED"
    # three trials, one MLflow run each: nothing rerun, nothing duplicated, all finished
    listing = [(k.data.tags["sweep.trial_id"], k.info.status, k.info.run_id in before) for k in kids_after]
    assert len(kids_after) == 3 and len({k.data.tags["sweep.trial_id"] for k in kids_after}) == 3, listing
    assert all(k.info.status == "FINISHED" for k in kids_after)
    for k in kids_after:
        if k.info.run_id in before and before[k.info.run_id].info.status == "FINISHED":
            assert k.data.metrics == before[k.info.run_id].data.metrics  # untouched
            assert k.info.end_time == before[k.info.run_id].info.end_time
    # the interrupted trial continued in its own run from its newest checkpoint: what it had
    # logged is kept, the steps since that checkpoint are logged again (with the same values:
    # resuming is deterministic), and nothing before it is
    loss_after = client.get_metric_history(interrupted.info.run_id, "train/loss")
    assert max(m.step for m in loss_before) < 3000, "killed after training had ended"
    after = {}
    for m in loss_after:
        after.setdefault(m.step, set()).add(m.value)
    assert sorted(after) == list(range(20, 3001, 20))
    assert all(len(values) == 1 for values in after.values())  # re-logged steps: same values
    assert all(m.value in after[m.step] for m in loss_before)
    relogged = len(loss_after) - len(after)
    assert relogged <= 100 // 20, f"{relogged} steps logged twice: restarted instead of continuing"


def test_a_sweep_of_trials_on_two_workers_each(tmp_path):
    """resources: {workers: 2, cpus_per_worker: 0.5}: each trial is a Ray Train run of 2 gloo
    workers (with the trial's own 0.1 CPU, 1.1 of the 2 cores Ray counts here); ASHA still hears
    train/fid by step, relayed from rank 0 through the trial's run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = tiny_spec(tmp_path, num_samples=2, max_concurrent=1, resources="{workers: 2, cpus_per_worker: 0.5}",
                     set="{iterations: 60, eval_every: 30, eval_samples: 100, mlp_width: 64, log_every: 10, "
                         "batch_size: 16}")
    out = subprocess.run(BENCH + ["sweep", str(spec), "--tracking-uri", uri, "--quiet"],
                         env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    client, parent, kids = children(uri)
    assert len(kids) == 2 and {k.data.params["workers"] for k in kids} == {"2"}
    for kid in kids:
        steps = [m.step for m in client.get_metric_history(kid.info.run_id, "train/fid")]
        assert steps[:1] == [30], steps  # the first rung's value reached the run, and with it ASHA
    finished = [k for k in kids if k.info.status == "FINISHED"]
    assert finished and all("fid" in k.data.metrics for k in finished)
