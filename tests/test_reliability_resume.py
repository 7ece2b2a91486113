"""Reliability: a killed run resumes exactly; a diverging run stops with its last good state.

The CLI tests run `bench run` as a subprocess on the exact gmm2d teacher with a few hundred
BOOT steps; one thread per process keeps them quick when the machine is shared and makes the
two runs compared bit for bit use the same reduction order.
"""
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import config as cfgs
from bench.checkpoints import list_checkpoints, newest_checkpoint, read_checkpoint
from bench.errors import BenchError
from bench.method import DistillContext, TrainStage
from bench.train import TrainConfig, Trainer
from conftest import bench_env, run_bench

CPU = torch.device("cpu")
BOOT_ARGS = ["run", "--method", "boot", "--teacher", "gmm2d", "--num-samples", "200", "--nfe", "1",
             "--metrics", "fid", "--set", "iterations=160", "--set", "batch_size=32",
             "--set", "checkpoint_every=20", "--set", "eval_every=0", "--set", "log_every=5",
             "--quiet"]


def _only_run(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("distill-bench").experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def _student(client, run_id):
    from safetensors.torch import load_file

    return load_file(client.download_artifacts(run_id, "student.safetensors"))


def test_kill_9_then_resume_equals_uninterrupted_run(tmp_path):
    ref_dir, dir_ = tmp_path / "ref", tmp_path / "killed"
    ref_dir.mkdir(), dir_.mkdir()
    ref_uri, uri = f"sqlite:///{ref_dir / 'm.db'}", f"sqlite:///{dir_ / 'm.db'}"
    ref = subprocess.Popen([sys.executable, "-m", "bench", *BOOT_ARGS, "--tracking-uri", ref_uri],
                           cwd=ref_dir, env=bench_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc = subprocess.Popen([sys.executable, "-m", "bench", *BOOT_ARGS, "--tracking-uri", uri],
                            cwd=dir_, env=bench_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list((dir_ / "checkpoints").glob("*/checkpoint_*.pt")):  # mid-distillation
        assert proc.poll() is None and time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (ckpt_dir,) = (dir_ / "checkpoints").iterdir()
    killed_at = max(int(p.stem.split("_")[1]) for p in ckpt_dir.glob("checkpoint_*.pt"))
    assert killed_at < 160, "the run finished before it was killed; raise iterations"
    _, run = _only_run(uri)
    assert run.info.status == "RUNNING"  # kill -9 leaves no chance to mark it

    resumed = run_bench([*BOOT_ARGS, "--tracking-uri", uri, "--resume"], dir_)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming MLflow run {ckpt_dir.name} from checkpoint" in resumed.stderr
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err

    client, run = _only_run(uri)  # the same MLflow run, now complete
    ref_client, ref_run = _only_run(ref_uri)
    assert run.info.run_id == ckpt_dir.name and run.info.status == "FINISHED"
    a, b = _student(client, run.info.run_id), _student(ref_client, ref_run.info.run_id)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise
    assert run.data.metrics["fid"] == ref_run.data.metrics["fid"]
    assert run.data.metrics["train_iterations"] == 160
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert steps == set(range(5, 161, 5))  # no gap in the curve across the kill


def test_resume_without_interrupted_run_starts_fresh_and_bad_ids_fail(tracking_uri, tmp_path):
    args = ["run", "--teacher", "gmm2d", "--nfe", "1", "--num-samples", "50", "--metrics", "fid",
            "--tracking-uri", tracking_uri, "--quiet"]
    done = run_bench([*args, "--resume"], tmp_path)
    assert done.returncode == 0 and "starting a new one" in done.stderr, done.stderr
    client, run = _only_run(tracking_uri)
    for rid, message in [("0" * 32, "no such MLflow run"), (run.info.run_id, "already finished")]:
        bad = run_bench([*args, "--resume", rid], tmp_path)
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 2 and len(lines) == 1 and message in lines[0], bad.stderr


def _trainer(tmp_path, loss=None, **overrides):
    """A Trainer of a linear model; ``loss(model)`` makes its loss (default: _loss())."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    cfg = cfgs.replace(TrainConfig(), {"iterations": 12, "lr": 1e-2, "checkpoint_every": 4,
                                       "keep_checkpoints": 5, "ema_decay": 0.9, **overrides})
    return Trainer(TrainStage(model, (loss or _loss())(model), cfg),
                   DistillContext(log=lambda m, s: None, device=CPU, workdir=tmp_path, progress=False))


def _loss(bad_at=None):
    def make(model):
        def loss(it, gen, rows=None):
            out = model(torch.randn(8, 4, generator=gen))
            return out.pow(2).mean(1) * (float("nan") if it == bad_at else 1.0), 1.0
        return loss
    return make


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_nan_loss_stops_with_last_good_checkpoint(tmp_path, grad_clip):
    clean = _trainer(tmp_path / "clean", grad_clip=grad_clip)
    for _ in range(7):  # the state after 7 good steps
        clean._step()
    bad = _trainer(tmp_path / "bad", _loss(bad_at=7), grad_clip=grad_clip)
    with pytest.raises(BenchError, match=r"training diverged: loss is nan at step 7; the last good state "
                                         r"\(step 7\) is saved in .*checkpoint_0000007\.pt") as err:
        bad.fit()
    assert "\n" not in str(err.value)
    state = read_checkpoint(tmp_path / "bad" / "checkpoint_0000007.pt")
    assert state["step"] == 7
    assert all(torch.equal(state["model"][k], v) for k, v in clean.model.state_dict().items())
    assert torch.equal(state["streams"]["gens"][0], clean.streams.gens[0].get_state())  # resumes as if step 7 never began


def test_weights_gone_non_finite_point_to_the_newest_good_checkpoint(tmp_path):
    """Without clipping an overflowing gradient writes inf into the weights before the loss
    shows it; the error then names the newest checkpoint, which was checked finite."""
    def make(model):
        def loss(it, gen, rows=None):
            out = model(torch.randn(8, 4, generator=gen))
            if it == 5:  # loss 0, gradient NaN (d sqrt(u) / du at u = 0 times d|v| / dv = 0)
                return (out - out.detach()).abs().sqrt().mean(1), 1.0
            return out.pow(2).mean(1), 1.0
        return loss

    t = _trainer(tmp_path, make, grad_clip=0.0)

    with pytest.raises(BenchError, match=r"training diverged: .* the last good checkpoint is "
                                         r".*checkpoint_0000004\.pt"):
        t.fit()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint_0000004.pt"]
    state = read_checkpoint(tmp_path / "checkpoint_0000004.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_diverging_cli_run_fails_in_one_line_and_is_marked_failed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    proc = run_bench(["run", "--method", "boot", "--teacher", "gmm2d", "--num-samples", "50",
                   "--metrics", "fid", "--set", "iterations=100", "--set", "batch_size=16",
                   "--set", "lr=1e35", "--set", "eval_every=20", "--set", "eval_samples=50",
                   "--tracking-uri", uri, "--quiet"], tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("bench: error: training diverged: ") and ".pt" in lines[0]
    path = Path(re.search(r"(\S+\.pt)", lines[0]).group(1))
    client, run = _only_run(uri)
    assert run.info.status == "FAILED"
    state = read_checkpoint(tmp_path / path if not path.is_absolute() else path)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    logged = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert state["step"] <= (max(logged) if logged else 0) + 20  # within one evaluation period


@pytest.fixture
def one_thread():
    """One intra-op thread: two threads on a shared 2-core machine can run 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_progressive_resumes_across_rounds_bitwise(tmp_path, one_thread):
    """Rounds 4 -> 2 steps (global steps 1-4, then 5-8); interrupted mid-round 1 and mid-round
    2 (a finished round's student then comes from its file), resumed from the newest checkpoint."""
    from diffusers import DDPMScheduler

    from bench.teachers.base import Provenance
    from bench.teachers.diffusers_teacher import unet_teacher
    from conftest import tiny_unet
    from methods.progressive import Progressive, ProgressiveConfig

    teacher = unet_teacher(tiny_unet(), DDPMScheduler(num_train_timesteps=1000), Provenance("test"))
    data = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    teacher.dataset = lambda: data
    base = dict(start_steps=8, end_steps=2, iterations=4, batch_size=4, checkpoint_every=2, log_every=1)

    def distill(workdir, stop_at=None, resume_from=None):
        def log(metrics, step):
            if step == stop_at:
                raise KeyboardInterrupt  # as a kill would, between two steps
        m = Progressive(teacher, cfgs.replace(ProgressiveConfig(), base), CPU)
        return m, m.distill(DistillContext(log=log, device=CPU, workdir=workdir, progress=False,
                                           resume_from=resume_from))

    straight, cost = distill(tmp_path / "straight")
    for stop in (3, 7):
        workdir = tmp_path / f"stop{stop}"
        with pytest.raises(KeyboardInterrupt):
            distill(workdir, stop_at=stop)
        ckpt = newest_checkpoint(workdir)
        assert ckpt.name == f"checkpoint_{stop - 1:07d}.pt"
        resumed, resumed_cost = distill(workdir, resume_from=ckpt)
        for n in (4, 2):
            for p, q in zip(straight.rounds[n].student.net.parameters(), resumed.rounds[n].student.net.parameters()):
                assert torch.equal(p, q), (stop, n)
        assert resumed_cost["teacher_forwards"] == cost["teacher_forwards"]
        assert resumed_cost["train_iterations"] == cost["train_iterations"] == 8


def test_sigterm_ends_the_run_killed_with_exit_143(tmp_path):
    """Before: 130, the Ctrl-C code. 143 is 128 + SIGTERM, what a scheduler expects."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "bench", *BOOT_ARGS[:-1], "--set", "iterations=5000",
                             "--tracking-uri", uri, "--quiet"], cwd=tmp_path, env=bench_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list((tmp_path / "checkpoints").glob("*/checkpoint_*.pt")):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err.strip().splitlines() == ["bench: terminated (SIGTERM)"], err
    _, run = _only_run(uri)
    assert run.info.status == "KILLED"
