"""Reliability of claims (issue #15, row 2): one process at a time trains and logs into a run.

Two `bench run --resume` of one killed run, started together as real processes: one resumes,
the other is refused in one line that names the run and the process holding it, and every
metric is logged once. A claim left by a killed process never blocks.
"""
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from bench.claims import claim
from bench.errors import BenchError
from conftest import bench_env, run_bench

BOOT = ["run", "--method", "boot", "--teacher", "gmm2d", "--num-samples", "200", "--nfe", "1",
        "--metrics", "fid", "--set", "iterations=2000", "--set", "batch_size=32",
        "--set", "checkpoint_every=20", "--set", "eval_every=0", "--set", "log_every=50", "--quiet"]
HOLD = "import sys, time; from bench.claims import claim\nwith claim(sys.argv[1], 'r1'):\n print('held', flush=True); time.sleep(600)"


def _holder(workdir) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], env=bench_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_claim_names_its_holder_and_a_killed_holder_blocks_nothing(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(BenchError, match=rf"run r1 is in use by process {holder.pid} on "
                                             rf"{re.escape(socket.gethostname())} since .* \(claim "):
            with claim(tmp_path, "r1"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    with claim(tmp_path, "r1"), claim(tmp_path, "r1"):  # the kernel dropped it; nested claims are fine
        assert (tmp_path / "claim.lock").read_text().startswith("process ")


def test_sync_of_a_spool_whose_run_is_in_use_is_refused(tmp_path, capfd):
    from bench.cli import main

    spool = tmp_path / "run1" / "spool"
    spool.mkdir(parents=True)
    (spool / "meta.json").write_text('{"uri": "sqlite:///none.db", "run_id": "r1"}')
    (spool / "events.jsonl").write_text('{"kind": "status", "data": "FINISHED", "timestamp": 1}\n')
    holder = _holder(spool.parent)
    try:
        assert main(["sync", str(spool)]) == 2
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"run r1 is in use by process {holder.pid}" in err[0], err


def test_two_resumes_of_one_run_at_once(tmp_path):
    """Killed mid-training, then `--resume RUN_ID` and `--resume` (the newest interrupted run of
    this configuration: the same one) at once: exactly one trains, the other is refused."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    first = subprocess.Popen([sys.executable, "-m", "bench", *BOOT, "--tracking-uri", uri], cwd=tmp_path,
                             env=bench_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list((tmp_path / "checkpoints").glob("*/checkpoint_*.pt")):
        assert first.poll() is None and time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    (run_id,) = [p.name for p in (tmp_path / "checkpoints").iterdir()]

    procs = [subprocess.Popen([sys.executable, "-m", "bench", *BOOT, "--tracking-uri", uri, *extra], cwd=tmp_path,
                              env=bench_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for extra in (["--resume", run_id], ["--resume"])]
    results = [(p.pid, p.returncode, out, err) for p in procs for out, err in [p.communicate(timeout=600)]]
    winners = [r for r in results if r[1] == 0]
    losers = [r for r in results if r[1] != 0]
    assert len(winners) == 1 and len(losers) == 1, results
    (win_pid, _, _, win_err), (_, code, _, err) = winners[0], losers[0]
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert re.match(rf"bench: error: run {run_id} is in use by process {win_pid} on ", lines[0]), lines
    assert f"resuming MLflow run {run_id} from checkpoint" in win_err

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("distill-bench").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    for key in ("fid", "train_iterations", "teacher_forwards"):
        assert len(client.get_metric_history(run_id, key)) == 1, key  # logged once, not twice

    again = run_bench([*BOOT, "--tracking-uri", uri, "--resume", run_id], tmp_path)
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 2 and len(lines) == 1 and "already finished" in lines[0], again.stderr
