"""After the run: the student as an MLflow model (loaded in a fresh process), ``bench sample``,
``bench export`` (diffusers' from_pretrained reproduces the run's samples), and what the MLflow
UI reads (run names, notes, single-value metrics, experiment kind, system metrics)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bench.cli import main
from conftest import bench_env

TINY = ["--teacher", "digits", "--num-samples", "64", "--batch-size", "32", "--fidelity-steps", "0",
        "--metrics", "fid", "--experiment", "use", "--quiet"]


def _samples(client, run_id, nfe, tmp):
    return np.load(client.download_artifacts(run_id, f"samples/nfe_{nfe}.npz", str(tmp)))["x"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tiny BOOT run (registered, system metrics off) and a DDIM run (system metrics sampled
    every 50 ms), in one store."""
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("use")
    cwd, env = os.getcwd(), os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")
    os.chdir(tmp)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    try:
        assert main(["run", "--method", "boot", "--nfe", "1", "--set", "iterations=2", "--set", "eval_every=0",
                     "--no-system-metrics", "--register", "digits-boot", "--tracking-uri", uri, *TINY]) == 0
        # a sample every 50 ms: the tiny run must outlast one interval for MLflow to log any
        os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "0.05"
        assert main(["run", "--method", "ddim", "--nfe", "1,2", "--seed", "3", "--tracking-uri", uri, *TINY]) == 0
    finally:
        os.chdir(cwd)
        os.environ.pop("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", None)
        if env is not None:
            os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = env
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("use")
    runs = {r.data.params["method"]: r for r in client.search_runs([exp.experiment_id])}
    return uri, client, exp, runs, tmp


FRESH = """
import json, sys
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
seeds = json.loads(sys.argv[3])
x = mlflow.pyfunc.load_model(f"runs:/{sys.argv[2]}/student").predict(pd.DataFrame({"seed": seeds}))
y = mlflow.pyfunc.load_model("models:/digits-boot/1").predict({"seed": seeds[:4]}, params={"device": "cpu"})
import numpy as np
np.save(sys.argv[4], x)
print(json.dumps({"shape": list(x.shape), "registered_equal": bool(np.allclose(y, x[:4], atol=1e-5)),
                  "harness": sorted(m for m in sys.modules if m.split(".")[0] in ("bench", "methods", "reports"))}))
"""


def test_pyfunc_round_trip_in_a_fresh_process(store, tmp_path):
    """runs:/<id>/student in another Python process, without the harness: the run's own samples."""
    from bench.evaluator import sample_seed

    uri, client, _, runs, _ = store
    run_id = runs["boot"].info.run_id
    seeds = [sample_seed(0, i) for i in range(64)]
    out = subprocess.run([sys.executable, "-c", FRESH, uri, run_id, json.dumps(seeds), str(tmp_path / "x.npy")],
                         cwd=tmp_path, env={**bench_env(), "PYTHONPATH": ""}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info == {"shape": [64, 1, 8, 8], "registered_equal": True, "harness": []}
    x = np.load(tmp_path / "x.npy")
    np.testing.assert_allclose(x, _samples(client, run_id, 1, tmp_path), atol=1e-5)


def test_bench_sample_a_student_and_a_training_free_run(store, tmp_path, capsys):
    uri, client, _, runs, _ = store
    boot, ddim = runs["boot"].info.run_id, runs["ddim"].info.run_id
    assert main(["sample", "--run", boot, "--n", "16", "--out-dir", str(tmp_path / "b"), "--tracking-uri", uri]) == 0
    x = np.load(tmp_path / "b" / "samples.npz")["x"]
    np.testing.assert_allclose(x, _samples(client, boot, 1, tmp_path)[:16], atol=1e-5)
    assert len(list((tmp_path / "b").glob("*.png"))) == 16
    # DDIM: rebuilt from the run's params; its own seed (3) by default
    assert main(["sample", "--run", ddim, "--nfe", "2", "--n", "8", "--out-dir", str(tmp_path / "d"),
                 "--tracking-uri", uri]) == 0
    x = np.load(tmp_path / "d" / "samples.npz")["x"]
    np.testing.assert_allclose(x, _samples(client, ddim, 2, tmp_path)[:8], atol=1e-5)
    assert main(["sample", "--run", ddim, "--seed", "4", "--n", "4", "--out", str(tmp_path / "g.png"),
                 "--tracking-uri", uri]) == 0
    assert (tmp_path / "g.png").stat().st_size > 100
    capsys.readouterr()
    assert main(["sample", "--run", boot, "--nfe", "2", "--tracking-uri", uri]) == 2
    assert "samples with NFE 1, not 2" in capsys.readouterr().err
    assert main(["sample", "--run", "nope", "--tracking-uri", uri]) == 2
    assert "no MLflow run 'nope'" in capsys.readouterr().err


def test_export_loads_with_diffusers_and_reproduces_the_samples(store, tmp_path, capsys):
    from diffusers import UNet2DModel

    uri, client, _, runs, _ = store
    run = runs["boot"]
    out = tmp_path / "exported"
    assert main(["export", "--run", run.info.run_id, "--out", str(out), "--tracking-uri", uri]) == 0
    unet = UNet2DModel.from_pretrained(str(out), subfolder="unet").eval()
    rule = json.loads((out / "sampling.json").read_text())["samplers"]["1"]["rule"]
    from bench.evaluator import seed_noise

    eps = seed_noise(0, range(8), (1, 8, 8))
    with torch.no_grad():  # the rule as the model card writes it
        x = rule["c_skip"] * eps + rule["c_out"] * unet(eps, torch.full((8,), rule["t"])).sample
    np.testing.assert_allclose(x.numpy(), _samples(client, run.info.run_id, 1, tmp_path)[:8], atol=1e-5)
    card = (out / "README.md").read_text()
    assert run.data.params["teacher.sha256"] in card and "library_name: diffusers" in card
    assert f"{run.data.metrics['fid']:.3f}" in card and "One network evaluation" in card
    capsys.readouterr()
    assert main(["export", "--run", runs["ddim"].info.run_id, "--out", str(tmp_path / "e2"),
                 "--tracking-uri", uri]) == 2
    assert "trained no student" in capsys.readouterr().err
    assert main(["export", "--run", run.info.run_id, "--out", str(out), "--tracking-uri", uri]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_what_the_mlflow_ui_reads(store):
    """Run names, the result table as the note, single-value metrics, the experiment kind,
    system metrics (on by default, off by the flag)."""
    from bench.tracking import KIND_TAG

    _, client, exp, runs, _ = store
    boot, ddim = runs["boot"], runs["ddim"]
    assert exp.tags[KIND_TAG] == "custom_model_development"
    assert (boot.info.run_name, ddim.info.run_name) == ("boot-digits-s0", "ddim-digits-s3")
    fids = {p.step: p.value for p in client.get_metric_history(ddim.info.run_id, "fid")}
    m = ddim.data.metrics
    assert (m["fid_nfe1"], m["fid_nfe2"], m["fid_best"]) == (fids[1], fids[2], min(fids.values()))
    assert m["fid_best_nfe"] == min(fids, key=fids.get) and m["train_seconds"] == 0
    assert boot.data.metrics["train_seconds"] > 0
    note = ddim.data.tags["mlflow.note.content"]
    assert f"| 2 | {fids[2]:.3f} |" in note and "Training-free" in note
    assert any(k.startswith("system/cpu_utilization_percentage") for k in m)
    assert not any(k.startswith("system/") for k in boot.data.metrics)


def test_progressive_students_with_two_heads_export_and_sample_exactly(tmp_path, tracking_uri):
    """digits_eps: the students predict x and eps (2 output channels); every round's DDIM rule
    reproduces the run's samples, and the exported UNet's config says 2 channels."""
    from mlflow.tracking import MlflowClient

    from bench.portable import StudentSampler
    from bench.evaluator import sample_seed

    assert main(["run", "--method", "progressive", "--set", "start_steps=4", "--set", "iterations=2",
                 "--nfe", "1,2", "--no-system-metrics", "--tracking-uri", tracking_uri,
                 *[a if a != "digits" else "digits_eps" for a in TINY]]) == 0
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("use").experiment_id])
    folder = client.download_artifacts(run.info.run_id, "student/artifacts/student", str(tmp_path / "s"))
    student = StudentSampler(folder, "cpu")
    assert student.nfes == [1, 2]
    for nfe in (1, 2):
        x = student.sample([sample_seed(0, i) for i in range(16)], nfe=nfe)
        np.testing.assert_allclose(x.numpy(), _samples(client, run.info.run_id, nfe, tmp_path)[:16], atol=1e-5)
    assert main(["export", "--run", run.info.run_id, "--nfe", "2", "--out", str(tmp_path / "e"),
                 "--tracking-uri", tracking_uri]) == 0
    assert json.loads((tmp_path / "e" / "unet" / "config.json").read_text())["out_channels"] == 2
    assert "x_and_epsilon" in (tmp_path / "e" / "README.md").read_text()


def test_consistency_students_sample_and_export_exactly(tmp_path, tracking_uri):
    """digits: the run's student samples with NFE 1, 2, 4 by bench.portable's consistency rule
    (re-noised with the seed-hashed fresh noise) exactly as the run did, and the exported
    folder's model card states that rule."""
    from mlflow.tracking import MlflowClient

    from bench.portable import StudentSampler
    from bench.evaluator import sample_seed

    assert main(["run", "--method", "consistency", "--set", "iterations=2", "--set", "eval_every=0",
                 "--nfe", "1,2,4", "--no-system-metrics", "--tracking-uri", tracking_uri, *TINY]) == 0
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("use").experiment_id])
    folder = client.download_artifacts(run.info.run_id, "student/artifacts/student", str(tmp_path / "s"))
    student = StudentSampler(folder, "cpu")
    assert student.nfes == [1, 2, 4]
    for nfe in (1, 2, 4):
        x = student.sample([sample_seed(0, i) for i in range(16)], nfe=nfe)
        np.testing.assert_allclose(x.numpy(), _samples(client, run.info.run_id, nfe, tmp_path)[:16], atol=1e-5)
    assert main(["export", "--run", run.info.run_id, "--nfe", "4", "--out", str(tmp_path / "e"),
                 "--tracking-uri", tracking_uri]) == 0
    card = (tmp_path / "e" / "README.md").read_text()
    assert "Multistep consistency sampling" in card and "[999, 759, 519, 279]" in card and "clipped to [-1" in card


def test_sweep_trials_are_named_by_sweep_and_index():
    from sweeps.trial import trial_run_name

    assert trial_run_name("lr", "run_trial_a1b2c3d4", "/x/lr/run_trial_a1b2c3d4_3_lr=0.001_2026") == "lr-t03"
    assert trial_run_name("lr", "run_trial_ab_00012", "/x/run_trial_ab_00012_12") == "lr-t12"
    assert trial_run_name("s", "run_trial_x", "/x/custom") == "s-run_trial_x"


@pytest.mark.fast
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("clip", [True, False])
def test_portable_ddim_rule_is_the_harness_ddim(prediction_type, clip):
    """bench.portable runs ddim_rule without the harness: bit for bit the harness's DDIM."""
    from conftest import tiny_unet

    from bench.portable import apply_rule
    from bench.sampling import ddim_rule, ddim_sample
    from bench.schedule import NoiseSchedule
    from bench.teachers.base import Provenance
    from bench.teachers.diffusers_teacher import _UNetNet

    unet = tiny_unet().eval()
    teacher = Teacher_(_UNetNet(unet), NoiseSchedule.linear(100), prediction_type, Provenance("test"), clip)
    noise = torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    steps = teacher.schedule.timesteps(3)
    with torch.no_grad():
        assert torch.equal(ddim_sample(teacher, noise, steps), apply_rule(ddim_rule(teacher, steps), unet, noise))


def Teacher_(net, schedule, prediction_type, provenance, clip):
    from bench.teachers.base import Teacher

    return Teacher(net, schedule, prediction_type, (1, 8, 8), provenance, clip_x0=clip)
