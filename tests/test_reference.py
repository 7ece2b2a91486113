"""References: data, data-free (teacher), image folders, statistics files; the on-disk cache."""
import time

import numpy as np
import pytest
import torch

from bench.errors import BenchError
from bench.evaluator import SampleSpec, evaluate, fid_from_stats
from bench.features import get_extractor
from bench.reference import build_reference
from bench.teachers import load_teacher

CPU = torch.device("cpu")


def _build(spec, teacher, extractor, n=300, counter=None):
    return build_reference(spec, teacher, extractor, n=n, steps=16, seed=0, batch_size=100, device=CPU,
                           on_compute=(lambda: counter("computed")) if counter else None)


def test_cache_hit_does_not_recompute():
    teacher, extractor = load_teacher("gmm2d"), get_extractor("points")
    calls = []
    start = time.perf_counter()
    first = _build("teacher", teacher, extractor, counter=calls.append)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    second = _build("teacher", teacher, extractor, counter=calls.append)
    warm = time.perf_counter() - start
    assert calls == ["computed"]  # the second build read the cache
    assert np.array_equal(first.mu, second.mu) and np.array_equal(first.sigma, second.sigma)
    assert torch.equal(first.features, second.features) and second.n == 300
    assert warm < cold
    _build("teacher", teacher, extractor, n=301, counter=calls.append)  # n is part of the key
    assert calls == ["computed", "computed"]


def test_auto_is_data_when_registered_else_teacher():
    teacher, extractor = load_teacher("gmm2d"), get_extractor("points")
    assert _build("auto", teacher, extractor).n == 20_000
    teacher.dataset = None
    assert _build("auto", teacher, extractor).n == 300
    with pytest.raises(BenchError, match="no registered data set"):
        _build("data", teacher, extractor)


def test_teacher_reference_is_close_to_data():
    teacher, extractor = load_teacher("gmm2d"), get_extractor("points")
    data, free = _build("data", teacher, extractor), _build("teacher", teacher, extractor, n=2000)
    assert fid_from_stats(free.mu, free.sigma, data.mu, data.sigma) < 0.05


def _write_digit_pngs(folder, n=200, size=8):
    from PIL import Image

    from bench.data import digits_split

    folder.mkdir()
    x = digits_split("heldout")[0][:n]
    for i, img in enumerate(x):
        u8 = ((img[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        Image.fromarray(u8).resize((size, size)).save(folder / f"{i:04d}.png")
    return x


def test_image_folder_reference(tmp_path):
    teacher, extractor = load_teacher("digits"), get_extractor("digits-cnn")
    x = _write_digit_pngs(tmp_path / "imgs")
    ref = _build(f"folder:{tmp_path / 'imgs'}", teacher, extractor)
    direct = extractor(x)
    assert ref.n == 200 and torch.allclose(ref.features, direct.float(), atol=1e-4)


def test_folder_of_wrong_size_is_a_clear_error(tmp_path):
    teacher, extractor = load_teacher("digits"), get_extractor("digits-cnn")
    _write_digit_pngs(tmp_path / "big", n=3, size=16)
    with pytest.raises(BenchError, match="is 16x16, the teacher makes 8x8"):
        _build(f"folder:{tmp_path / 'big'}", teacher, extractor)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="holds no images"):
        _build(f"folder:{tmp_path / 'empty'}", teacher, extractor)


def test_stats_file_reference(tmp_path):
    from bench.registry import METHODS

    teacher, extractor = load_teacher("gmm2d"), get_extractor("points")
    data = _build("data", teacher, extractor)
    np.savez(tmp_path / "ref.npz", mu=data.mu, sigma=data.sigma)
    stats = _build(f"stats:{tmp_path / 'ref.npz'}", teacher, extractor)
    sampler = METHODS.get("ddim")(teacher, METHODS.get("ddim").Config(), CPU).sampler(4)
    spec = SampleSpec((2,), 200, 0, 100, CPU)
    a, b = evaluate(sampler, spec, data, extractor), evaluate(sampler, spec, stats, extractor)
    assert a.fid == pytest.approx(b.fid, rel=1e-9) and np.isnan(b.kid) and not np.isnan(a.kid)
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3), sigma=np.eye(3))
    digits_ext = get_extractor("digits-cnn")
    with pytest.raises(BenchError, match=r"extractor gives 64-D features"):
        _build(f"stats:{tmp_path / 'bad.npz'}", load_teacher("digits"), digits_ext)
    with pytest.raises(BenchError, match="must be an .npz with arrays mu and sigma"):
        _build(f"stats:{tmp_path / 'missing.npz'}", teacher, extractor)


def test_unknown_reference_spec():
    with pytest.raises(BenchError, match="unknown reference 'nope'"):
        _build("nope", load_teacher("gmm2d"), get_extractor("points"))


def test_fid_needs_n_at_least_feature_dim():
    from bench.registry import METHODS

    teacher, extractor = load_teacher("digits"), get_extractor("digits-cnn")
    ref = _build("data", teacher, extractor)
    sampler = METHODS.get("ddim")(teacher, METHODS.get("ddim").Config(), CPU).sampler(1)
    with pytest.raises(BenchError, match=r"at least as many samples as feature dimensions \(64\).*--metrics kid"):
        evaluate(sampler, SampleSpec(teacher.sample_shape, 32, 0, 32, CPU), ref, extractor)
    ev = evaluate(sampler, SampleSpec(teacher.sample_shape, 32, 0, 32, CPU), ref, extractor, metrics=("kid",))
    assert np.isnan(ev.fid) and not np.isnan(ev.kid)


def test_a_changed_teacher_folder_gets_a_fresh_reference(tmp_path):
    """The stale-cache reproduction: editing scheduler_config.json in a --teacher-path folder
    changes the teacher's samples, so the data-free reference must be recomputed, not read."""
    import json

    from diffusers import DDPMPipeline, DDPMScheduler

    from conftest import tiny_unet

    folder = tmp_path / "teacher"
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(beta_schedule="linear")).save_pretrained(folder)
    extractor, calls = get_extractor("points"), []
    first = _build("teacher", load_teacher("digits", path=str(folder)), extractor, n=32, counter=calls.append)
    _build("teacher", load_teacher("digits", path=str(folder)), extractor, n=32, counter=calls.append)
    assert calls == ["computed"]
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "beta_end": 0.03}))
    changed = _build("teacher", load_teacher("digits", path=str(folder)), extractor, n=32, counter=calls.append)
    assert calls == ["computed", "computed"] and not np.array_equal(first.mu, changed.mu)
    digits = load_teacher("digits")
    a = _build("data", digits, extractor, counter=calls.append)
    digits.dataset = lambda: torch.zeros(5, 1, 8, 8)  # another data set: another entry
    b = _build("data", digits, extractor, counter=calls.append)
    assert calls == ["computed"] * 4 and a.n == 1347 and b.n == 5


def test_cache_ls_and_clear(tmp_path, capsys):
    from bench.cli import main

    _build("teacher", load_teacher("gmm2d"), get_extractor("points"), n=50)
    assert main(["cache", "ls"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("references") and "teacher analytic" in out[0] and "n=50" in out[0]
    assert main(["cache", "clear"]) == 0 and "removed 1 cached file" in capsys.readouterr().out
    assert main(["cache", "ls"]) == 0 and "is empty" in capsys.readouterr().out
