"""Reliability of results (issue #15, rows 1 and 9): a non-finite number is never logged as a
result, every check that needs no trained student comes before distillation, and a run that
failed in evaluation is evaluated again from its checkpoint with corrected settings."""
import re
import shutil
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.errors import BenchError

DIGITS = Path(__file__).resolve().parents[1] / "bench" / "assets" / "digits"
GMM = ["--teacher", "gmm2d", "--nfe", "1", "--metrics", "fid", "--quiet"]


def _one_line(capfd, args) -> str:
    code = main(args)
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("bench: error: "), err
    return err[0]


def _runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("distill-bench")
    return client, (client.search_runs([exp.experiment_id]) if exp else [])


@pytest.fixture
def nan_teacher(tmp_path) -> Path:
    """The shipped digits teacher with one NaN weight (in conv_out, so every sample is NaN)."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "nan_teacher"
    shutil.copytree(DIGITS, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state["conv_out.weight"].view(-1)[0] = float("nan")
    save_file(state, str(weights))
    return folder


@pytest.mark.parametrize("method", ["ddim", "boot"])
def test_a_nan_teacher_is_named_before_anything_runs(method, nan_teacher, tracking_uri, capfd):
    """Before: ddim logged FID 107.85 and FINISHED; boot said "training diverged ... lower lr"."""
    line = _one_line(capfd, ["run", "--method", method, "--teacher-path", str(nan_teacher), "--nfe", "1",
                             "--num-samples", "100", "--tracking-uri", tracking_uri, "--quiet"])
    assert "teacher digits" in line and "gives non-finite output: 1 of its weights in " \
                                      "unet.conv_out.weight are not finite" in line, line
    assert "lower lr" not in line
    assert _runs(tracking_uri)[1] == []  # nothing was opened, nothing logged


def test_non_finite_samples_at_one_nfe_log_no_result(tracking_uri, capfd, monkeypatch):
    from methods.ddim import DDIM

    plain = DDIM.sampler

    def nan_at_2(self, nfe):
        sample = plain(self, nfe)
        return (lambda noise, cond=None: sample(noise, cond) * float("nan")) if nfe == 2 else sample

    monkeypatch.setattr(DDIM, "sampler", nan_at_2)
    line = _one_line(capfd, ["run", "--teacher", "gmm2d", "--nfe", "1,2,4", "--num-samples", "60",
                             "--batch-size", "30", "--tracking-uri", tracking_uri, "--quiet"])
    assert re.search(r"ddim on teacher gmm2d: 30 of 30 samples \(seeds 0\.\.29\) at NFE 2 are not finite "
                     r"\(NaN or inf\); no result was logged and the run ends FAILED", line), line
    client, (run,) = _runs(tracking_uri)
    assert run.info.status == "FAILED"
    assert not [k for k in run.data.metrics if k in ("fid", "kid", "precision", "teacher_psnr")]


def test_non_finite_features_and_metrics_stop_the_evaluator(monkeypatch):
    from bench import evaluator
    from bench.evaluator import ReferenceStats, SampleSpec, evaluate
    from bench.features import get_extractor

    extractor = get_extractor("points")
    ref = ReferenceStats.from_features(torch.randn(100, 2, generator=torch.Generator().manual_seed(0)))
    spec = SampleSpec((2,), 40, 0, 20, torch.device("cpu"))

    def inf_row(noise, cond=None):
        out = noise.clone()
        out[3, 0] = float("inf")
        return out

    with pytest.raises(evaluator.NonFinite, match=r"1 of 20 samples \(seeds 0\.\.19\) at NFE 3 are not finite"):
        evaluate(inf_row, spec, ref, extractor, nfe=3, metrics=("fid",))
    monkeypatch.setattr(evaluator, "fid_from_stats", lambda *a: float("nan"))
    with pytest.raises(evaluator.NonFinite, match=r"fid at NFE 1 is nan although every sample and feature"):
        evaluate(lambda noise, cond=None: noise, spec, ref, extractor, nfe=1, metrics=("fid",))


def test_a_non_finite_loss_from_the_teacher_is_not_called_a_divergence(tmp_path):
    from bench.method import DistillContext, TrainStage
    from bench.train import TrainConfig, Trainer

    model = torch.nn.Linear(2, 2)
    loss = lambda it, gen, rows=None: (model(torch.randn(4, 2, generator=gen)).pow(2).mean(1) * float("nan"), 1.0)  # noqa: E731
    ctx = DistillContext(log=lambda m, s: None, device=torch.device("cpu"), workdir=tmp_path, progress=False,
                         teacher_fault=lambda: "its prediction at step 999 is not finite")
    trainer = Trainer(TrainStage(model, loss, TrainConfig(iterations=3, checkpoint_every=0)), ctx)
    with pytest.raises(BenchError, match=r"training stopped at step 0: loss is nan at step 0, because the "
                                         r"teacher's own output is not finite \(its prediction at step 999"):
        trainer.fit()


@pytest.mark.parametrize("args, message", [
    (["--method", "boot", "--teacher", "digits", "--num-samples", "50", "--metrics", "fid"],
     "FID needs at least as many samples as feature dimensions (64), got n=50"),
    (["--method", "boot", *GMM[:4], "--num-samples", "3", "--metrics", "pr"],
     "precision/recall need more than k=3 samples, got n=3"),
    (["--method", "boot", *GMM[:4], "--num-samples", "50", "--metrics", "kid", "--reference", "stats:S"],
     "a stats: reference holds FID statistics only"),
    (["--method", "boot", *GMM[:4], "--num-samples", "50", "--reference", "folder:nowhere"],
     "reference folder nowhere holds no images"),
])
def test_checks_that_need_no_student_come_before_distillation(args, message, tracking_uri, tmp_path, capfd):
    """Before: the FID check came after 8 minutes of BOOT training, in a run left FAILED."""
    import numpy as np

    np.savez(tmp_path / "S", mu=np.zeros(2), sigma=np.eye(2))
    (tmp_path / "S.npz").rename(tmp_path / "S")
    line = _one_line(capfd, ["run", *args, "--set", "iterations=400", "--tracking-uri", tracking_uri,
                             "--quiet"])
    assert message in line, line
    assert not (tmp_path / "checkpoints").exists() and _runs(tracking_uri)[1] == []


def test_a_run_that_failed_in_evaluation_is_evaluated_again_from_its_checkpoint(tracking_uri, capfd,
                                                                                 monkeypatch):
    """--resume RUN_ID with changed evaluation settings: a new run evaluates the source's student
    (MLflow params cannot change), which is not trained again."""
    from safetensors.torch import load_file

    from bench import run as run_module
    from bench.checkpoints import read_checkpoint
    from bench.resume import REEVALUATES_TAG

    boot = ["run", "--method", "boot", *GMM, "--set", "iterations=30", "--set", "checkpoint_every=10",
            "--set", "eval_every=0", "--tracking-uri", tracking_uri]

    def fails(*a, **k):
        raise BenchError("evaluation failed (simulated)")

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "_evaluate_all", fails)
        assert "evaluation failed (simulated)" in _one_line(capfd, [*boot, "--num-samples", "50"])
    client, (source,) = _runs(tracking_uri)
    assert source.info.status == "FAILED" and source.data.params["n"] == "50"

    assert main([*boot, "--set", "lr=3e-4", "--num-samples", "80", "--resume", source.info.run_id]) == 2
    assert "started with another configuration" in capfd.readouterr().err  # a training field differs

    assert main([*boot, "--num-samples", "80", "--resume", source.info.run_id]) == 0
    err = capfd.readouterr().err
    assert f"run {source.info.run_id} was evaluated with other settings" in err, err
    _, runs = _runs(tracking_uri)
    (new,) = [r for r in runs if r.info.run_id != source.info.run_id]
    assert new.data.tags[REEVALUATES_TAG] == source.info.run_id and new.info.status == "FINISHED"
    assert new.data.params["n"] == "80" and "fid" in new.data.metrics
    assert new.data.metrics["train_iterations"] == 30  # the source's training, not a new one
    assert client.get_run(source.info.run_id).info.status == "FAILED"
    ckpt = read_checkpoint(Path("checkpoints") / source.info.run_id / "checkpoint_0000030.pt")
    student = load_file(client.download_artifacts(new.info.run_id, "student.safetensors"))
    assert all(torch.equal(student[k], ckpt["ema"][k]) for k in student)
