"""Hub teachers load through diffusers from a local folder or the HF cache; never the network."""
import os
import subprocess
import sys
import time

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler

from bench.errors import BenchError
from bench.teachers import load_teacher
from bench.files import sha256_of
from conftest import tiny_unet


def _scheduler():
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")


def test_load_from_pipeline_folder(tmp_path):
    unet = tiny_unet(in_channels=3, size=8)
    DDPMPipeline(unet=unet, scheduler=_scheduler()).save_pretrained(tmp_path)
    teacher = load_teacher("cifar10", path=str(tmp_path))
    assert teacher.sample_shape == (3, 8, 8) and teacher.T == 1000
    assert teacher.prediction_type == "epsilon" and teacher.clip_x0
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    assert teacher.provenance.sha256 == sha256_of(weights)
    assert teacher.provenance.source == str(tmp_path.resolve())
    x = torch.randn(2, 3, 8, 8)
    teacher.clip_x0 = False  # random weights: clipping would (rightly) change eps
    with torch.no_grad():
        assert torch.allclose(teacher.eps(x, 500), unet(x, torch.tensor([500, 500])).sample, atol=1e-6)


def test_load_flat_hub_layout_from_cache(tmp_path, monkeypatch):
    """The google/ddpm-* repos keep config.json and scheduler_config.json at the root."""
    import huggingface_hub.constants as hf_constants

    commit = "a" * 40
    repo = tmp_path / "hub" / "models--google--ddpm-ema-church-256"
    snap = repo / "snapshots" / commit
    tiny_unet(in_channels=3, size=8).save_pretrained(snap)
    _scheduler().save_config(snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    teacher = load_teacher("lsun_church")
    assert teacher.provenance.source == "google/ddpm-ema-church-256"
    assert teacher.provenance.revision == commit
    assert teacher.provenance.sha256 == sha256_of(snap / "diffusion_pytorch_model.safetensors")


def test_absent_weights_fail_fast_in_process(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    start = time.perf_counter()
    with pytest.raises(BenchError, match=r"not in the local Hugging Face cache.*hf download google/ddpm-cifar10-32.*--teacher-path"):
        load_teacher("cifar10")
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize("online", [False, True])
def test_absent_weights_cli_one_line_within_seconds(tmp_path, online):
    """Even without HF_HUB_OFFLINE the loader never touches the network."""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HOME": str(tmp_path / "hf")}
    if online:
        env.pop("HF_HUB_OFFLINE", None)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--teacher", "lsun_bedroom",
                           "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "google/ddpm-ema-bedroom-256" in lines[0] and "--teacher-path" in lines[0]
    assert elapsed < 20, elapsed  # interpreter start and imports included
    assert not (tmp_path / "m.db").exists()  # no MLflow run for a run that could not start


def test_missing_teacher_path(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        load_teacher("cifar10", path=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="holds no diffusers UNet"):
        load_teacher("cifar10", path=str(tmp_path / "empty"))
