"""Data-parallel training (issue #20): a batch as random streams, micro-batches, Ray Train workers.

The promise (bench/streams.py): N workers compute what one process computes with N
micro-batches, the global batch and the teacher-forward count do not depend on the layout, and a
checkpoint continues exactly on any layout with the same number of streams.
"""
import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest
import torch

from bench import config as cfgs
from bench.checkpoints import newest_checkpoint
from bench.errors import BenchError
from bench.method import DistillContext, TrainStage
from bench.streams import Streams, stream_seed
from bench.train import TrainConfig, Trainer
from conftest import bench_env, run_bench

CPU = torch.device("cpu")


@pytest.mark.fast
def test_stream_zero_is_the_seed_and_others_differ():
    assert stream_seed(7, 0) == 7
    seeds = {stream_seed(7, k) for k in range(4)} | {stream_seed(8, k) for k in range(1, 4)}
    assert len(seeds) == 7 and all(0 <= s < 2**63 for s in seeds)


@pytest.mark.fast
def test_ranks_hold_consecutive_streams_and_equal_rows():
    ranks = [Streams(3, 24, micro_batches=2, rank=r, world=3) for r in range(3)]
    assert [sorted(s.gens) for s in ranks] == [[0, 1], [2, 3], [4, 5]]
    assert {s.rows for s in ranks} == {4} and {s.count for s in ranks} == {6}
    with pytest.raises(BenchError, match=r"batch_size 10 does not split into 3 worker\(s\) x 1 micro-batch"):
        Streams(0, 10, world=3)


def _linear_trainer(tmp_path, micro_batches: int, **overrides):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x_all = torch.randn(64, 3)

    def loss(step, gen, rows=None):
        x = x_all[torch.randint(0, len(x_all), (rows or 8,), generator=gen)]
        return (model(x) - 1).pow(2).mean(1), 1.0

    cfg = cfgs.replace(TrainConfig(), {"iterations": 1, "batch_size": 8, "micro_batches": micro_batches,
                                       "grad_clip": 0.0, "ema_decay": 0.0, "checkpoint_every": 0, **overrides})
    ctx = DistillContext(log=lambda m, s: None, device=CPU, workdir=tmp_path, progress=False, seed=5)
    return Trainer(TrainStage(model, loss, cfg), ctx), model, x_all


@pytest.mark.fast
def test_micro_batches_accumulate_the_gradient_of_the_whole_batch(tmp_path):
    """Two micro-batches of 4 rows, from streams 0 and 1: the gradient is that of the mean loss
    over all 8 rows (each stream's own rows, drawn here independently of the trainer)."""
    trainer, model, x_all = _linear_trainer(tmp_path, 2)
    rows = [x_all[torch.randint(0, 64, (4,), generator=torch.Generator().manual_seed(stream_seed(5, k)))]
            for k in (0, 1)]
    reference = torch.nn.Linear(3, 2)
    reference.load_state_dict(model.state_dict())
    (reference(torch.cat(rows)) - 1).pow(2).mean(1).mean().backward()
    loss = trainer._step()
    assert torch.allclose(model.weight.grad, reference.weight.grad, atol=1e-7)
    assert torch.allclose(model.bias.grad, reference.bias.grad, atol=1e-7)
    with torch.no_grad():
        expected = float((reference(torch.cat(rows)) - 1).pow(2).mean())
    assert loss == pytest.approx(expected, rel=1e-6)
    assert trainer.total.teacher_forwards == 8  # both micro-batches counted, per row


@pytest.mark.fast
def test_a_checkpoint_continues_only_with_the_same_stream_count(tmp_path):
    trainer, _, _ = _linear_trainer(tmp_path / "a", 2, checkpoint_every=1)
    trainer.fit()
    saved = newest_checkpoint(tmp_path / "a")
    with pytest.raises(BenchError, match=r"written with 2 batch stream\(s\) \(workers x micro_batches\) and this "
                                         r"run has 1: .*resume with workers x micro_batches = 2$"):
        other, _, _ = _linear_trainer(tmp_path / "b", 1)
        other.ctx.resume_from = saved
        other.load(saved)


def _history(uri: str):
    """The store's one run: (run, train/loss by step (a re-logged step: its last value), the
    final teacher-forward count)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("distill-bench").experiment_id])
    loss = {m.step: m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/loss"),
                                            key=lambda m: (m.step, m.timestamp))}
    forwards = client.get_metric_history(run.info.run_id, "train/teacher_forwards")
    return run, [loss[k] for k in sorted(loss)], max(m.value for m in forwards)


RUN = ["run", "--method", "boot", "--teacher", "gmm2d", "--nfe", "1", "--num-samples", "100", "--metrics", "fid",
       "--set", "iterations=80", "--set", "batch_size=16", "--set", "log_every=1", "--set", "checkpoint_every=10",
       "--quiet"]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """One uninterrupted 2-worker run (Ray Train), shared by the tests below: its store's URI."""
    folder = tmp_path_factory.mktemp("whole")
    uri = f"sqlite:///{folder / 'whole'}.db"
    done = run_bench([*RUN, "--workers", "2", "--tracking-uri", uri], folder, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return uri


def test_two_workers_reproduce_two_micro_batches(two_workers, tmp_path):
    """BOOT on 2 gloo workers (Ray Train) against one process with 2 micro-batches and one with 1:
    the 2-worker loss curve equals the 2-micro-batch one to float32 rounding (the gradient sum
    runs in another order), the teacher-forward count is the same for all three, and the
    2-worker run logs one MLflow run with the same metric names."""
    runs = {"w2": _history(two_workers)}
    for name, extra in (("m2", ["--set", "micro_batches=2"]), ("w1", [])):
        uri = f"sqlite:///{tmp_path / name}.db"
        done = run_bench([*RUN, "--tracking-uri", uri, *extra], tmp_path, timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = _history(uri)
    (w2, loss_w2, tf_w2), (m2, loss_m2, tf_m2), (w1, loss_w1, tf_w1) = runs["w2"], runs["m2"], runs["w1"]
    assert len(loss_w2) == 80 and torch.allclose(torch.tensor(loss_w2), torch.tensor(loss_m2), rtol=1e-4, atol=1e-7)
    assert loss_w2 != loss_w1  # other streams: another (equally valid) draw of the same global batch
    assert tf_w2 == tf_m2 == tf_w1
    assert w2.data.params["workers"] == "2" and w1.data.params["workers"] == "1"
    assert w2.data.params["method.batch_size"] == w1.data.params["method.batch_size"] == "16"
    assert {k for k in w2.data.metrics if not k.startswith("system/")} == \
        {k for k in w1.data.metrics if not k.startswith("system/")}  # system metrics: every 10 s
    assert abs(w2.data.metrics["fid"] - m2.data.metrics["fid"]) < 1e-3


def _kill_a_worker_once_a_checkpoint_exists(proc, workdirs: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if any(workdirs.glob("*/checkpoint_*.pt")):
            for p in psutil.process_iter(["pid", "cmdline"]):
                if any("RayTrainWorker" in part for part in (p.info["cmdline"] or [])):
                    os.kill(p.info["pid"], signal.SIGKILL)
                    return
        time.sleep(0.2)
    pytest.fail("no worker to kill: the run ended or never wrote a checkpoint")


def _killed_run(args, uri, cwd):
    """Start ``bench run ARGS``, kill one worker after the first checkpoint, return (rc, stderr)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "bench", *args, "--tracking-uri", uri], cwd=cwd,
                            env=bench_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _kill_a_worker_once_a_checkpoint_exists(proc, Path(cwd) / "checkpoints")
    _, err = proc.communicate(timeout=400)
    return proc.returncode, err


def test_a_killed_worker_fails_cleanly_or_is_restarted_and_both_finish_exactly(two_workers, tmp_path):
    """Kill one of 2 workers after the first checkpoint. Without retries the run fails in one
    line naming the newest checkpoint, and bench run --resume finishes it; with
    --worker-retries 1 Ray Train restarts the workers from that checkpoint and the run finishes
    by itself. Both loss curves, from the checkpoint on, equal the uninterrupted run's."""
    args = [*RUN[:-1], "--workers", "2"]  # not quiet: the failure's last line is read
    uris = {"whole": two_workers, **{name: f"sqlite:///{tmp_path / name}.db" for name in ("failed", "retried")}}
    for name in ("failed", "retried"):  # each run in its own folder: checkpoints/ tells the killer when to strike
        (tmp_path / name).mkdir()
    rc, err = _killed_run(args, uris["failed"], tmp_path / "failed")
    assert rc != 0
    assert re.search(r"training on 2 workers failed: .*; the newest checkpoint in .* is the last good state: "
                     r"continue with bench run --resume", err.strip().splitlines()[-1]), err[-3000:]
    resumed = run_bench([*args, "--quiet", "--tracking-uri", uris["failed"], "--resume"], tmp_path / "failed",
                        timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rc, err = _killed_run([*args, "--worker-retries", "1"], uris["retried"], tmp_path / "retried")
    assert rc == 0, err[-3000:]
    _, loss_whole, forwards = _history(uris["whole"])
    for name in ("failed", "retried"):
        run, loss, forwards_here = _history(uris[name])
        assert run.info.status == "FINISHED" and len(loss) == 80, name
        assert torch.allclose(torch.tensor(loss[-30:]), torch.tensor(loss_whole[-30:]), rtol=1e-4, atol=1e-7), name
        assert forwards_here == forwards, name


@pytest.mark.fast
def test_two_networks_split_both_batches(tmp_path):
    """DMD2 (generator and fake score): with 2 micro-batches both networks' updates draw half
    the rows per stream, the teacher-forward count equals one stream's, and training runs."""
    from bench.teachers import load_teacher
    from methods.dmd2 import DMD2

    counts = {}
    for m in (1, 2):
        torch.manual_seed(0)
        method = DMD2(load_teacher("gaussian"), cfgs.replace(DMD2.Config(), {
            "iterations": 3, "batch_size": 8, "micro_batches": m, "checkpoint_every": 0, "eval_every": 0,
            "fake_warmup": 0, "fake_updates": 2, "mlp_width": 16}), CPU)
        drawn = []
        noise = method.noise
        method.noise = lambda n, gen: drawn.append(n) or noise(n, gen)
        trainer = Trainer(method.training_stage(), DistillContext(log=lambda *_: None, device=CPU, workdir=tmp_path,
                                                                  progress=False))
        trainer.fit()
        counts[m] = trainer.total.teacher_forwards
        assert set(drawn) == {8 // m} and len(drawn) == 3 * (2 + 1) * m  # fake, fake, generator per step
        assert all(torch.isfinite(p).all() for p in method.G.parameters())
    assert counts[1] == counts[2] == 3 * 8
