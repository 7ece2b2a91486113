"""Reliability on a full disk (issue #15, rows 4 and 10): a checkpoint, an artifact or a spool
that does not fit is one line naming the device, the partial file is removed, what was
written before is intact, and the run ends FAILED. A full tracking store falls back to the
spool, quoting its cause, without MLflow's SQLAlchemy tracebacks.

The real cases mount a small tmpfs (root, and a sandbox that allows mounts); where that is not
possible they are skipped, and the monkeypatched cases (an OSError ENOSPC from the write)
still run everywhere.
"""
import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import checkpoints as ckpt
from bench.errors import BenchError, root_cause
from bench.method import DistillContext, TrainStage
from bench.spool import EVENTS, SpooledRun, read_events
from bench.train import TrainConfig, Trainer
from conftest import bench_env


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(path, size)``: a tmpfs of ``size`` at ``path``, unmounted after the test."""
    mounted = []

    def mount(path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); "
                        f"the monkeypatched ENOSPC tests cover the logic")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _trainer(workdir: Path, width: int = 256, **cfg) -> Trainer:
    torch.manual_seed(0)
    model = torch.nn.Linear(width, width)  # model, EMA and Adam's two moments: ~4 x 263 kB
    loss = lambda it, gen, rows=None: (model(torch.randn(4, width, generator=gen)).pow(2).mean(1), 1.0)  # noqa: E731
    config = TrainConfig(**{"iterations": 8, "checkpoint_every": 4, "keep_checkpoints": 1, **cfg})
    ctx = DistillContext(log=lambda m, s: None, device=torch.device("cpu"), workdir=workdir, progress=False)
    return Trainer(TrainStage(model, loss, config), ctx)


def _message(workdir: Path, step: int, before: str) -> str:
    return (rf"no space left on .* while writing checkpoint {step} to {workdir}/checkpoint_{step:07d}\.pt; "
            rf"{before}; free space, then continue with bench run --resume")


def test_checkpoint_on_a_full_tmpfs(tmp_path, tmpfs):
    """One checkpoint (~1.05 MB) fits in 1.6 MB, the second does not."""
    workdir = tmpfs(tmp_path / "fs", "1600k")
    trainer = _trainer(workdir)
    with pytest.raises(BenchError, match=_message(workdir, 8, f"the previous checkpoint {workdir}/"
                                                              f"checkpoint_0000004.pt is intact")) as err:
        trainer.fit()
    assert str(err.value).startswith("no space left on tmpfs (") and "\n" not in str(err.value)
    assert [p.name for p in workdir.iterdir()] == ["checkpoint_0000004.pt"]  # no .tmp left
    assert ckpt.read_checkpoint(workdir / "checkpoint_0000004.pt")["step"] == 4


def test_checkpoint_enospc_monkeypatched(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, width=4)
    trainer.fit()  # checkpoints 4 and 8, keeping 1

    def full(state, fh):
        fh.write(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") \
            from OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(BenchError, match=_message(tmp_path, 9, f"the previous checkpoint {tmp_path}/"
                                                               f"checkpoint_0000008.pt is intact")):
        ckpt.write_checkpoint({"model": {}, "step": 9}, ckpt.checkpoint_path(tmp_path, 9))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_0000008.pt"]


def test_cli_run_on_a_full_disk_fails_in_one_line(tmp_path, tmpfs):
    """Before: a 38-line traceback ending in inline_container.cc, a .tmp file filling the disk."""
    from mlflow.tracking import MlflowClient

    tmpfs(tmp_path / "checkpoints", "64k")  # the run's work folder: its claim fits, no checkpoint does
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--method", "boot", "--teacher", "gmm2d",
                           "--nfe", "1", "--num-samples", "50", "--metrics", "fid", "--set", "iterations=40",
                           "--set", "checkpoint_every=20", "--tracking-uri", uri, "--quiet"],
                          cwd=tmp_path, env=bench_env(), capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("bench: error: no space left on tmpfs (") and "while writing checkpoint 20" \
        in lines[0] and "no earlier checkpoint was saved" in lines[0], lines
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("distill-bench").experiment_id])
    assert run.info.status == "FAILED"
    assert not list((tmp_path / "checkpoints").glob("*/*.tmp"))


def test_artifacts_on_a_full_disk(tracking_uri, capfd, monkeypatch):
    from bench import artifacts
    from bench.cli import main

    def full(samples, path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifacts, "save_samples", full)
    assert main(["run", "--teacher", "gmm2d", "--nfe", "1", "--num-samples", "50", "--tracking-uri",
                 tracking_uri, "--quiet"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(r"bench: error: no space left on .* while writing the run's artifacts", err[0])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("distill-bench").experiment_id])
    assert run.info.status == "FAILED"


class _DeadStore:
    def log_batch(self, *a, **k):
        raise ConnectionError("Connection refused")

    set_terminated = log_artifacts = log_batch


def _fill_spool(workdir: Path) -> tuple[SpooledRun, BenchError]:
    tracker = SpooledRun(_DeadStore(), "r1", "http://127.0.0.1:9", workdir)
    with pytest.raises(BenchError) as err:
        for step in range(100_000):
            tracker.log_metrics({"loss": 0.5, "x" * 200: 1.0}, step=step)
    return tracker, err.value


def test_spool_on_a_full_tmpfs(tmp_path, tmpfs, capfd):
    tracker, err = _fill_spool(tmpfs(tmp_path / "fs", "64k"))
    assert re.match(r"no space left on tmpfs \(.*\) while spooling the run's MLflow data to .*events\.jsonl "
                    r"\(the store failed: Connection refused\); the events before it are kept there", str(err))
    events, torn = read_events(tracker.spool)
    assert not torn and len(events) > 10  # no half line: everything before is readable
    assert tracker.finish("FAILED") is False  # it says so, and does not raise
    assert "end status FAILED was not recorded" in capfd.readouterr().err


def test_spool_enospc_monkeypatched(tmp_path, monkeypatch):
    from bench import spool

    real_open = open

    def fake_open(path, mode="r", *a, **k):
        fh = real_open(path, mode, *a, **k)
        if Path(path).name == EVENTS and "a" in mode and Path(path).stat().st_size > 2000:
            fh.write('{"kind": "metr')  # what a full disk leaves: a piece of a line
            fh.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return fh

    monkeypatch.setattr(spool, "open", fake_open, raising=False)
    tracker, err = _fill_spool(tmp_path)
    assert "while spooling the run's MLflow data" in str(err)
    events, torn = read_events(tracker.spool)
    assert not torn and (tracker.spool / EVENTS).read_bytes().endswith(b"\n")


def test_store_disk_full_quotes_the_cause_and_prints_no_traceback(tmp_path, tmpfs):
    """Before: 289 lines of SQLAlchemy tracebacks; the warning quoted 'Query-invoked autoflush'."""
    fs = tmpfs(tmp_path / "fs", "3m")
    uri = f"sqlite:///{fs / 'm.db'}"
    make = "import mlflow, sys; mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_experiment('distill-bench')"
    subprocess.run([sys.executable, "-c", make, uri], env=bench_env(), capture_output=True, timeout=300, check=True)
    free = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize
    (fs / "filler").write_bytes(b"\0" * max(0, free - 40_000))  # room for a few rows only
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--method", "boot", "--teacher", "gmm2d",
                           "--nfe", "1", "--num-samples", "50", "--metrics", "fid", "--set", "iterations=200",
                           "--set", "log_every=1", "--set", "batch_size=8", "--tracking-uri", uri, "--quiet"],
                          cwd=tmp_path, env=bench_env(), capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and len(lines) <= 2, proc.stderr
    assert "failed (database or disk is full)" in lines[0], lines
    (spool,) = (tmp_path / "checkpoints").glob("*/spool")
    assert json.loads((spool / "meta.json").read_text())["reason"] == "database or disk is full"


def test_root_cause_skips_wrappers():
    """MLflow wraps SQLAlchemy's error, which wraps the driver's; the driver's is the cause."""
    class Wrapped(Exception):
        orig = OSError("database or disk is full")

    try:
        try:
            raise Wrapped("(raised as a result of Query-invoked autoflush; consider using a session.no_autoflush "
                          "block)\n(sqlite3.OperationalError) database or disk is full")
        except Wrapped as inner:
            raise RuntimeError("API request failed") from inner
    except RuntimeError as outer:
        assert root_cause(outer) == "database or disk is full"
    assert root_cause(ValueError("(raised as a result of Query-invoked autoflush)\n(x) the cause")) == "(x) the cause"



def test_two_writers_of_one_cache_file_both_finish(tmp_path, monkeypatch):
    """Before: concurrent runs building the same reference shared one ``.tmp.npz`` name; the
    first rename took the file from under the second (FileNotFoundError in CI's four-run test)."""
    import numpy as np

    from bench.files import save_npz_atomic

    path, real, nested = tmp_path / "references" / "points.npz", np.savez, []

    def savez(file, **arrays):  # a second writer runs to the end while the first is mid-write
        real(file, **arrays)
        if not nested:
            nested.append(file)
            save_npz_atomic(path, a=np.ones(2))

    monkeypatch.setattr(np, "savez", savez)
    save_npz_atomic(path, a=np.zeros(2))
    assert np.load(path)["a"].tolist() == [0.0, 0.0]  # the last rename wins, whole
    assert [p.name for p in path.parent.iterdir()] == ["points.npz"]  # no temporary left
