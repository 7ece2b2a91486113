"""The Inception path runs for real on a locally written file of the same architecture."""
import subprocess
import sys

import pytest
import torch

from bench.errors import BenchError
from bench.features import INCEPTION_FILE, get_extractor


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """torch-fidelity's InceptionV3 with random weights, saved as its weights file would be."""
    import torch_fidelity.feature_extractor_inceptionv3 as fx

    mp = pytest.MonkeyPatch()
    mp.setattr(fx, "load_state_dict_from_url", lambda *a, **k: {})
    mp.setattr(fx.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    torch.manual_seed(0)
    net = fx.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    mp.undo()
    path = tmp_path_factory.mktemp("inception") / INCEPTION_FILE
    torch.save(net.state_dict(), path)
    return path


def test_inception_features_from_local_weights(random_inception):
    ext = get_extractor("inception-v3-compat", inception_weights=str(random_inception))
    assert ext.name == "inception-v3-compat" and ext.dim == 2048 and len(ext.weights_sha256) == 64
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    f = ext(x)
    assert f.shape == (2, 2048) and f.dtype == torch.float64 and torch.isfinite(f).all()
    gray = ext(x[:, :1])  # single-channel samples are shown to Inception as grey RGB
    assert gray.shape == (2, 2048)


def test_inception_weights_from_env_and_hub_cache(random_inception, monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_INCEPTION_WEIGHTS", str(random_inception))
    assert get_extractor("inception-v3-compat").dim == 2048
    monkeypatch.delenv("BENCH_INCEPTION_WEIGHTS")
    hub = tmp_path / "torch"
    (hub / "hub" / "checkpoints").mkdir(parents=True)
    (hub / "hub" / "checkpoints" / INCEPTION_FILE).symlink_to(random_inception)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub / "hub"))
    assert get_extractor("inception-v3-compat").dim == 2048


def test_missing_inception_weights_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(BenchError, match=rf"Inception weights not found.*{INCEPTION_FILE}.*--inception-weights"):
        get_extractor("inception-v3-compat")


def test_cli_missing_inception_weights_exits_2(tmp_path):
    """A hub teacher folder is found, but Inception weights are not: one line, exit 2."""
    from diffusers import DDPMPipeline, DDPMScheduler

    from conftest import tiny_unet

    DDPMPipeline(unet=tiny_unet(3, 8), scheduler=DDPMScheduler()).save_pretrained(tmp_path / "t")
    env = {"TORCH_HOME": str(tmp_path / "torch"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "BENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--teacher", "cifar10", "--teacher-path",
                           str(tmp_path / "t"), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and INCEPTION_FILE in lines[0]


def test_not_a_state_dict(tmp_path):
    bad = tmp_path / INCEPTION_FILE
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BenchError, match="not a loadable InceptionV3 state dict"):
        get_extractor("inception-v3-compat", inception_weights=str(bad))


def test_hub_teacher_end_to_end_with_data_free_reference(tmp_path, random_inception, tracking_uri):
    """cifar10-style folder, Inception features, the teacher's own samples as reference."""
    from diffusers import DDPMPipeline, DDPMScheduler
    from mlflow.tracking import MlflowClient

    from bench.cli import main
    from conftest import tiny_unet

    DDPMPipeline(unet=tiny_unet(3, 8), scheduler=DDPMScheduler()).save_pretrained(tmp_path / "t")
    cfg = tmp_path / "run.yaml"
    cfg.write_text("nfe: [1, 2]\nnum_samples: 6\nbatch_size: 3\nreference_samples: 6\n"
                   "reference_steps: 4\nfidelity_steps: 4\nmetrics: [kid, pr]\n")
    assert main(["run", "--teacher", "cifar10", "--teacher-path", str(tmp_path / "t"), "--config", str(cfg),
                 "--inception-weights", str(random_inception), "--tracking-uri", tracking_uri, "--quiet"]) == 0
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("distill-bench").experiment_id])
    p = run.data.params
    assert p["feature_extractor"] == "inception-v3-compat" and p["reference.resolved"] == "teacher"
    assert p["reference.n"] == "6" and p["teacher.sha256"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "kid")] == [1, 2]
    assert "fid" not in run.data.metrics and "precision" in run.data.metrics
