"""The GPU path's options (bench/accel.py) on the CPU: each is a no-op or works unchanged.
``BENCH_COMPILE_BACKEND=eager`` runs the torch.compile wiring without inductor's C++ builds."""
import pytest
import torch

from bench import accel
from bench.errors import BenchError
from bench.method import DistillContext
from bench.teachers import load_teacher
from methods.boot import BOOT, BOOTConfig

CPU = torch.device("cpu")


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

    trainer = Trainer(m.training_stage(), DistillContext(log=lambda m, s: None, device=CPU, workdir=tmp_path,
                                                         progress=False))
    assert trainer.fit().steps == 2
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
