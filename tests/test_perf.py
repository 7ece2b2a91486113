"""`bench perf` and the GPU path's options, exercised on the CPU with tiny settings.

The figures here are meaningless (a loaded 2-core machine); what is tested is that every
section runs, prints and logs under the documented names, and that each GPU option is a
no-op or works on the CPU. ``BENCH_COMPILE_BACKEND=eager`` runs the torch.compile wiring
without inductor's minute-long C++ builds.
"""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from bench import accel
from bench.cli import main
from bench.errors import BenchError
from bench.method import DistillContext
from bench.perf import PerfConfig, run_perf
from bench.teachers import load_teacher
from methods.boot import BOOT, BOOTConfig

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
TINY = dict(batch_size=4, steps=2, blocks=1, warmup=1, sample_batch_size=8, repeats=1,
            eval_samples=70, reference_samples=70, reference_steps=2)


def _ctx(tmp_path):
    return DistillContext(log=lambda m, s: None, device=CPU, seed=0, workdir=tmp_path, progress=False)


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
    assert len(err) == 1 and err[0].startswith("bench: error: unknown --arch 'nope'")
    with pytest.raises(BenchError, match="--methods"):
        PerfConfig(methods=("ddim",))


@pytest.mark.parametrize("arch,params_m,gflop", [("cifar10", 35.7, 12.4), ("lsun_bedroom", 113.7, 497.0)])
def test_architectures_match_the_hub_models(arch, params_m, gflop):
    """The random-weight UNets have the google/ddpm-* parameter counts (DESIGN.md); FLOPs
    are counted on the meta device, so no memory or compute is spent."""
    from types import SimpleNamespace

    from bench.perf_models import forward_flops, make_unet
    from bench.teachers.diffusers_teacher import _UNetNet

    with torch.device("meta"):
        unet = make_unet(arch, "meta")
    assert sum(p.numel() for p in unet.parameters()) / 1e6 == pytest.approx(params_m, abs=0.05)
    size = unet.config.sample_size
    teacher = SimpleNamespace(net=_UNetNet(unet), sample_shape=(3, size, size))
    assert forward_flops(teacher) / 1e9 == pytest.approx(gflop, rel=0.01)


def test_training_flags_run_on_cpu(tmp_path, monkeypatch):
    """channels_last, gradient checkpointing, the fused optimiser and compile together, on
    a tiny diffusers UNet: training runs, the names of the weights are unchanged, the options took."""
    from diffusers import DDPMScheduler

    from bench.teachers.base import Provenance
    from bench.teachers.diffusers_teacher import unet_teacher
    from conftest import tiny_unet

    monkeypatch.setenv("BENCH_COMPILE_BACKEND", "eager")
    teacher = unet_teacher(tiny_unet().requires_grad_(False), DDPMScheduler(), Provenance("tiny"))
    m = BOOT(teacher, BOOTConfig(iterations=2, batch_size=4, eval_every=0, checkpoint_every=0,
                                 compile=True, channels_last=True, grad_checkpointing=True,
                                 fused_optimizer="on"), CPU)
    keys = list(m.student.state_dict())
    from bench.train import Trainer

    trainer = Trainer(m.student, m.config, _ctx(tmp_path), frozen=(teacher.net,))
    cost = trainer.fit(m.loss)
    assert cost["train_iterations"] == 2
    assert list(m.student.state_dict()) == keys  # in-place compile keeps checkpoints loadable
    assert trainer.opt.param_groups[0]["fused"] is True
    assert m.student.net.unet.is_gradient_checkpointing
    conv = m.student.net.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.isfinite(p).all() for p in m.student.parameters())


def test_fused_auto_is_cuda_only_and_checkpointing_needs_a_unet():
    assert accel.use_fused("auto", CPU) is False and accel.use_fused("on", CPU) is True
    assert accel.use_fused("auto", torch.device("cuda")) is True
    with pytest.raises(BenchError, match="fused_optimizer"):
        accel.use_fused("maybe", CPU)
    with pytest.raises(BenchError, match="grad_checkpointing needs a diffusers network"):
        accel.enable_grad_checkpointing(torch.nn.Linear(2, 2))


def test_compile_without_a_cpp_compiler_fails_in_one_line(monkeypatch):
    monkeypatch.setenv("BENCH_COMPILE_BACKEND", "inductor")
    monkeypatch.setattr(accel.shutil, "which", lambda name: None)
    with pytest.raises(BenchError, match="needs a C\\+\\+ compiler.*BENCH_COMPILE_BACKEND=eager"):
        accel.check_compile(CPU)


def test_compiled_one_step_sampler_matches_eager(monkeypatch):
    monkeypatch.setenv("BENCH_COMPILE_BACKEND", "eager")
    teacher = load_teacher("digits")
    noise = torch.randn(6, *teacher.sample_shape, generator=torch.Generator().manual_seed(0))
    eager = BOOT(teacher, BOOTConfig(), CPU)
    fast = BOOT(teacher, BOOTConfig(compile=True), CPU)
    with torch.no_grad():
        a, b = eager.sampler(1)(noise), fast.sampler(1)(noise)
    assert torch.allclose(a, b, atol=1e-6)
    assert fast.sampler(1) is not None and fast._fast[0] is fast.ema  # compiled once, reused


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
