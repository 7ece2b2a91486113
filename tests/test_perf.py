"""`bench perf` (the perf package) and the GPU-machine scripts, exercised on the CPU with tiny settings.

The figures here are meaningless (a loaded 2-core machine); what is tested is that every
section runs, prints and logs under the documented names. ``BENCH_COMPILE_BACKEND=eager`` runs
the torch.compile wiring without inductor's minute-long C++ builds.
"""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from bench.cli import main
from perf.config import PerfConfig
from perf.measure import run_perf

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(batch_size=4, steps=2, blocks=1, warmup=1, sample_batch_size=8, repeats=1,
            eval_samples=70, reference_samples=70, reference_steps=2)


def test_perf_logs_one_mlflow_run(tracking_uri):
    from mlflow.tracking import MlflowClient

    cfg = PerfConfig(sections=("train", "sample"), methods=("boot",), nfe=(1, 50), log_every=2, **TINY)
    metrics = run_perf(cfg, tracking_uri=tracking_uri, experiment="perf-test")
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("perf-test")
    (run,) = client.search_runs([exp.experiment_id])
    logged = run.data.metrics
    for name in ("boot_train_images_per_second", "boot_train_mfu", "boot_train_achieved_tflops",
                 "logging_overhead_fraction", "logging_call_seconds", "sample_ratio_1step_vs_ddim50",
                 "sample_images_per_second_boot_1step", "sample_images_per_second_ddim_50"):
        assert f"perf/{name}" in logged and logged[f"perf/{name}"] == pytest.approx(metrics[name])
    assert logged["perf/boot_train_step_flops"] > 0 and logged["perf/boot_train_mfu"] > 0
    assert run.data.params["perf.teacher"] == "digits"
    assert "measured fp32 matmul" in run.data.params["peak_source"]
    assert run.data.tags["bench.perf"] == "1"
    # the logged-arm blocks' own train/* calls went to the same run
    assert "train/loss" in logged


def test_gpu_script_runs_on_cpu_without_mlflow(tmp_path):
    """scripts/gpu_bench.sh end to end on the digits teacher; an mlflow that cannot be
    imported proves `bench perf --no-mlflow` never needs it."""
    fake = tmp_path / "fake"
    (fake / "mlflow").mkdir(parents=True)
    (fake / "mlflow" / "__init__.py").write_text("raise ImportError('mlflow must not be imported')\n")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "ARCHS": "digits", "QUICK": "1",
           "OUT": str(out), "WHEELS": str(tmp_path / "no-wheels"), "COMPILE": "sampler",
           "BENCH_COMPILE_BACKEND": "eager", "PYTHONPATH": str(fake), "BENCH_CACHE": str(tmp_path / "c"),
           "ARCH_TIMEOUT": "280"}  # a loaded CI machine: the script's own limit is sized for an H100
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_bench.sh")], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=320)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = (out / "table.md").read_text()
    for name in ("boot_train_images_per_second", "progressive_train_mfu", "reference_cache_speedup",
                 "sample_images_per_second_boot_1step_compiled", "evaluator_images_per_second"):
        assert f"perf/{name}" in table
    result = json.loads((out / "digits.json").read_text())
    assert result["params"]["perf.random_weights"] == "False"


def test_perf_bad_input_is_one_line(capsys):
    assert main(["perf", "--arch", "nope", "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "arch must be one of cifar10" in err[0], err
    assert main(["perf", "--methods", "nope", "--sections", "sample", "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "unknown method 'nope'; known: boot" in err[-1], err
    with pytest.raises(ValueError, match="--methods"):
        PerfConfig(methods=())


def test_every_method_is_timed_through_the_registry(tmp_path):
    """Sampling rows come from each method's own samplers (at the NFEs it serves), training
    rows from each method that has a training stage: nothing in perf/ names a method."""
    cfg = PerfConfig(sections=("train", "sample"), methods=("ddim", "boot", "progressive"),
                     nfe=(1, 2, 50), **TINY)
    metrics = run_perf(cfg, mlflow=False)
    assert {"sample_images_per_second_ddim_1step", "sample_images_per_second_ddim_50step",
            "sample_images_per_second_boot_1step", "sample_images_per_second_progressive_2step",
            "sample_images_per_second_ddim_50", "boot_train_images_per_second",
            "progressive_train_images_per_second"} <= set(metrics)
    assert "sample_images_per_second_boot_2step" not in metrics  # BOOT has no 2-step sampler
    assert not any(k.startswith("ddim_train") for k in metrics)  # DDIM does not train
    # the ratio is the first listed method's one-step sampler against the teacher's DDIM-50
    ratio = metrics["sample_images_per_second_ddim_1step"] / metrics["sample_images_per_second_ddim_50"]
    assert metrics["sample_ratio_1step_vs_ddim50"] == pytest.approx(ratio, rel=1e-9)


@pytest.mark.parametrize("arch,params_m,gflop", [("cifar10", 35.7, 12.4), ("lsun_bedroom", 113.7, 497.0)])
def test_architectures_match_the_hub_models(arch, params_m, gflop):
    """The random-weight UNets have the google/ddpm-* parameter counts (DESIGN.md); FLOPs
    are counted on the meta device, so no memory or compute is spent."""
    from types import SimpleNamespace

    from perf.models import forward_flops, make_unet
    from bench.teachers.diffusers_teacher import _UNetNet

    with torch.device("meta"):
        unet = make_unet(arch, "meta")
    assert sum(p.numel() for p in unet.parameters()) / 1e6 == pytest.approx(params_m, abs=0.05)
    size = unet.config.sample_size
    teacher = SimpleNamespace(net=_UNetNet(unet), sample_shape=(3, size, size))
    assert forward_flops(teacher) / 1e9 == pytest.approx(gflop, rel=0.01)


def _wheel(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


def test_install_wheels_unpacks_only_what_is_missing(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels / "fakepkg_zz-1.0-py3-none-any.whl",
           {"fakepkg_zz/__init__.py": "X = 1\n", "fakepkg_zz-1.0.data/purelib/fakeextra_zz.py": "Y = 2\n",
            "fakepkg_zz-1.0.data/scripts/tool": "#!/bin/sh\n"})
    _wheel(wheels / "numpy-0.0-py3-none-any.whl", {"numpy/__init__.py": "raise ImportError\n"})
    _wheel(wheels / "otherpkg_zz-1.0-cp27-cp27m-win32.whl", {"otherpkg_zz/__init__.py": ""})
    target = tmp_path / "deps"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "install_wheels.py"), str(wheels), str(target)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (target / "fakepkg_zz" / "__init__.py").is_file() and (target / "fakeextra_zz.py").is_file()
    assert not (target / "numpy").exists()  # importable already: the image's own is kept
    assert not (target / "otherpkg_zz").exists()  # no build for this interpreter
    assert not (target / "tool").exists()


def test_a_sampler_that_fails_to_compile_keeps_the_eager_figures(monkeypatch, capsys):
    """On an H200 inductor failed on the compiled one-step sampler and the whole sampling
    section was lost; the eager rows must survive, with a one-line warning."""
    import bench.accel
    from perf import sample

    def broken(module, device):
        def call(*args, **kwargs):
            raise RuntimeError("Unhandled FakeTensor Device Propagation for aten.cat.default")
        return call

    monkeypatch.setattr(bench.accel, "compiled_sampler", broken)
    monkeypatch.setattr(bench.accel, "check_compile", lambda device: None)
    from bench.teachers import load_teacher

    out = sample.measure_sampling(["boot"], load_teacher("gmm2d"), torch.device("cpu"), [1, 50], batch=8,
                                  repeats=1, compiled=True, bf16=False)
    assert "images_per_second_boot_1step" in out and "images_per_second_boot_1step_compiled" not in out
    assert "failed to compile" in capsys.readouterr().err


def test_step_flops_count_every_update_of_a_stages_parts():
    """DMD2's step is fake_updates fake-score updates plus one generator update: FLOPs grow by
    the same amount per extra fake update (the MFU of a two-network method is not understated)."""
    from bench import config as cfgs
    from bench.teachers import load_teacher
    from methods.dmd2 import DMD2
    from perf.train import step_flops

    def flops(k):
        m = DMD2(load_teacher("gmm2d"), cfgs.replace(DMD2.Config(), {"fake_updates": k, "fake_warmup": 0,
                                                                     "batch_size": 8, "mlp_width": 16}), "cpu")
        return step_flops(m.training_stage(), torch.device("cpu"), bf16=False)

    f1, f3, f5 = flops(1), flops(3), flops(5)
    assert f3 - f1 == f5 - f3 > 0 and f1 > (f3 - f1) / 2


def test_scale_section_times_one_and_two_workers(tmp_path):
    """bench perf --sections scale: images/s on 1 and 2 Ray Train workers at the same global
    batch, and the efficiency against linear (1 for one worker by definition). In a subprocess:
    Ray's processes stay out of pytest's."""
    out = tmp_path / "perf.json"
    done = subprocess.run([sys.executable, "-m", "bench", "perf", "--teacher", "gaussian", "--sections", "scale",
                           "--methods", "boot", "--workers", "1,2", "--steps", "2", "--blocks", "1", "--warmup", "1",
                           "--batch-size", "16", "--no-mlflow", "--json", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"})
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())["metrics"]
    assert figures["boot_scale_efficiency_w1"] == 1.0
    w1, w2 = figures["boot_scale_images_per_second_w1"], figures["boot_scale_images_per_second_w2"]
    assert w1 > 0 and w2 > 0
    assert figures["boot_scale_efficiency_w2"] == pytest.approx(w2 / (2 * w1))
