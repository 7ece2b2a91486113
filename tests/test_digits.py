"""The embedded default: shipped weights load through the diffusers path and sample digits."""
import torch

from bench.cli import main
from bench.evaluator import ReferenceStats, SampleSpec, evaluate
from bench.features import get_extractor
from bench.teachers import load_teacher
from bench.files import sha256_of
from bench.teachers.digits import ASSET_DIR


def test_shipped_teacher_contract():
    teacher = load_teacher("digits")
    assert teacher.sample_shape == (1, 8, 8) and teacher.T == 1000
    assert teacher.prediction_type == "v_prediction" and teacher.clip_x0
    assert teacher.features == "digits-cnn" and teacher.dataset().shape == (1347, 1, 8, 8)
    weights = ASSET_DIR / "unet" / "diffusion_pytorch_model.safetensors"
    assert teacher.provenance.sha256 == sha256_of(weights)
    assert teacher.provenance.source == "bench/assets/digits"
    assert sum(p.numel() for p in teacher.parameters()) == 701_345


def test_shipped_teacher_quality_pinned():
    """Measured when the weights were shipped, n=256: DDIM-16 0.60, DDIM-2 9.28 (n=1000: 0.38, 9.6)."""
    from bench.registry import METHODS

    teacher = load_teacher("digits")
    extractor = get_extractor("digits-cnn")
    ref = ReferenceStats.from_features(extractor(teacher.dataset()))
    ddim = METHODS.get("ddim")(teacher, METHODS.get("ddim").Config(), torch.device("cpu"))
    spec = SampleSpec(teacher.sample_shape, 256, 0, 256, torch.device("cpu"))
    fid16 = evaluate(ddim.sampler(16), spec, ref, extractor).fid
    fid2 = evaluate(ddim.sampler(2), spec, ref, extractor).fid
    assert abs(fid16 - 0.60) < 0.05 and abs(fid2 - 9.28) < 0.5, (fid16, fid2)


def test_teacher_train_command_reproduces_layout(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["teacher", "train", "digits", "--out", str(out), "--set", "iterations=3",
                 "--set", "batch_size=8"]) == 0
    teacher = load_teacher("digits", path=str(out))
    assert teacher.sample_shape == (1, 8, 8) and teacher.prediction_type == "v_prediction"
    assert teacher.provenance.source == str(out)
    assert (out / "recipe.json").is_file()


def test_features_train_command(tmp_path, capsys):
    out = tmp_path / "cnn.safetensors"
    assert main(["features", "train", "digits", "--out", str(out)]) == 0
    assert "held-out accuracy 0.9" in capsys.readouterr().out
