"""``bench run`` end to end on an exact teacher, read back through MLflow's own API."""
import json
import subprocess
import sys

import numpy as np
import pytest

from bench.cli import main


def test_run_logs_params_metrics_artifacts(tracking_uri, capsys):
    from mlflow.tracking import MlflowClient

    code = main(["run", "--teacher", "gmm2d", "--nfe", "1,4,16", "--num-samples", "400",
                 "--batch-size", "150", "--seed", "3", "--tracking-uri", tracking_uri,
                 "--experiment", "t", "--set", "spacing=trailing", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "FID[points]" in out and "MLflow run" in out

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("t")
    (run,) = client.search_runs([exp.experiment_id])
    p = run.data.params
    assert (p["method"], p["label"], p["teacher"], p["seed"], p["device"]) == ("ddim", "ddim", "gmm2d", "3", "cpu")
    assert p["method.spacing"] == "trailing" and p["n"] == "400" and p["feature_extractor"] == "points"
    assert p["teacher.source"] == "analytic"
    fid = client.get_metric_history(run.info.run_id, "fid")
    assert sorted(m.step for m in fid) == [1, 4, 16]
    by_nfe = {m.step: m.value for m in fid}
    assert by_nfe[16] < by_nfe[4] < by_nfe[1]  # DDIM on an exact teacher improves with steps
    # the network calls counted per batch, beside the FID at the step they are logged at
    assert {m.step: m.value for m in client.get_metric_history(run.info.run_id, "nfe_counted")} == {1: 1, 4: 4, 16: 16}
    for key in ("kid", "sample_seconds_per_image", "sample_images_per_second", "precision", "teacher_psnr"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [1, 4, 16]
    assert "git_commit" in run.data.tags and "version.torch" in run.data.tags

    def files(path=""):
        out = []
        for f in client.list_artifacts(run.info.run_id, path):
            out += files(f.path) if f.is_dir else [f.path]
        return out

    names = set(files())
    assert {"config.json", "summary.csv", "grids/nfe_1.png", "samples/nfe_16.npz"} <= names
    local = client.download_artifacts(run.info.run_id, "samples/nfe_4.npz")
    assert np.load(local)["x"].shape == (400, 2)
    cfg = json.load(open(client.download_artifacts(run.info.run_id, "config.json")))
    assert cfg["run"]["nfe"] == [1, 4, 16] and cfg["method_config"] == {"spacing": "trailing"}


def test_config_file_and_set(tracking_uri, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("teacher: gaussian\nnfe: [2]\nnum_samples: 64\nbatch_size: 64\nset:\n  spacing: leading\n")
    assert main(["run", "--config", str(cfg), "--tracking-uri", tracking_uri, "--quiet"]) == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("distill-bench").experiment_id])
    assert run.data.params["teacher"] == "gaussian" and run.data.params["method.spacing"] == "leading"


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "unknown method 'nope'; known: boot, consistency, ddim"),
    (["--teacher", "nope"], "unknown teacher 'nope'; known: celebahq, cifar10, digits"),
    (["--teacher", "gmm2d", "--nfe", "0,2"], "every NFE must be >= 1"),
    (["--teacher", "gmm2d", "--nfe", "2000"], "NFE 2000 is outside 1..1000"),
    (["--teacher", "gmm2d", "--nfe", "two"], "bad value for run field 'nfe'"),
    (["--config", "/nonexistent.yaml"], "cannot read config /nonexistent.yaml"),
    (["--set", "spacing"], "use --set key=value"),
    (["--set", "lr=1"], "unknown ddim config field 'lr'; known: spacing"),
    (["--set", "spacing=random"], "invalid ddim config: spacing must be one of"),
    pytest.param(["--device", "cuda"], "no CUDA device is visible", marks=pytest.mark.skipif(
        __import__("torch").cuda.is_available(), reason="a CUDA device is visible")),
])
def test_bad_input_one_line(args, message, tracking_uri, capsys):
    assert main(["run", *args, "--tracking-uri", tracking_uri, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench: error: ") and message in err[0], err


def test_console_script_help():
    proc = subprocess.run([sys.executable, "-m", "bench", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "run" in proc.stdout and "ls" in proc.stdout
