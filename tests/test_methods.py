"""One contract, checked for every registered method on every registered teacher that runs offline.

For each (method, teacher): the config round-trips through MLflow params and every field
through ``--set``; a tiny distillation runs and every default NFE samples; each sampler makes
exactly NFE network evaluations per batch; the teacher forward passes a method reports equal
the rows that actually went through frozen networks; the teacher is left untouched; and
training resumed from a checkpoint ends bitwise where the uninterrupted run ends. A pair
that cannot run says why in one line (a hub teacher without weights here: skipped with
its error as the reason).
"""
import dataclasses

import pytest
import torch

from bench import config as cfgs
from bench.checkpoints import list_checkpoints
from bench.errors import BenchError
from bench.method import DistillContext
from bench.nfe import NetworkCalls
from bench.registry import METHODS, TEACHERS

CPU = torch.device("cpu")
# shrink whatever of these a method's config has: a tiny run of the same code
TINY = {"iterations": 2, "batch_size": 8, "eval_every": 0, "checkpoint_every": 1, "keep_checkpoints": 2,
        "log_every": 1, "fit_iterations": 2, "mlp_width": 32, "synthetic_samples": 16,
        "fake_warmup": 0}  # the generator's teacher forwards happen in the 2 steps, MLP fake scores too
PAIRS = [(m, t) for m in METHODS for t in TEACHERS]


def _teacher(name):
    """The registered teacher; class-conditional ones guided (w = 2: two forwards per row)."""
    try:
        teacher = TEACHERS.get(name)(path=None, device="cpu")
    except BenchError as exc:
        assert "\n" not in str(exc)
        pytest.skip(f"{name}: {exc}")
    if teacher.num_classes:
        teacher.guidance_scale = 2.0
    return teacher


def _method(name, teacher, **extra):
    """The method on ``teacher``; skips (after checking the one-line refusal) where the method
    declares that it takes no class-conditional teachers."""
    cls = METHODS.get(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    overrides = {k: v for k, v in {**TINY, **extra}.items() if k in fields}
    torch.manual_seed(0)  # MLP students start from random weights: the same in every instance
    if teacher.num_classes and cls.no_conditions:
        with pytest.raises(BenchError) as refused:
            cls(teacher, cfgs.replace(cls.Config(), overrides), CPU)
        assert str(refused.value) == cls.no_conditions and "\n" not in cls.no_conditions
        pytest.skip(f"{name} takes no class-conditional teachers: {cls.no_conditions}")
    return cls(teacher, cfgs.replace(cls.Config(), overrides), CPU)


def _labels(teacher, n=4) -> tuple:
    """The samplers' extra argument: labels i mod K (as the evaluator draws them), or none."""
    return (torch.arange(n) % teacher.num_classes,) if teacher.num_classes else ()


def _ctx(workdir, resume_from=None):
    return DistillContext(log=lambda m, s: None, device=CPU, seed=0, workdir=workdir, progress=False,
                          resume_from=resume_from)


def _noise(teacher, n=4):
    return torch.randn((n,) + teacher.sample_shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", list(METHODS))
def test_config_round_trips_and_every_field_sets(method):
    cls = METHODS.get(method)
    cfg = cls.Config()
    assert cfgs.from_params(cls.Config, cfgs.to_params(cfg, "method."), "method.") == cfg
    for f in dataclasses.fields(cfg):  # --set name=<its own value, as text> gives it back
        text = cfgs.to_params(cfg)[f.name]
        assert getattr(cfgs.replace(cfg, {f.name: text}), f.name) == getattr(cfg, f.name), f.name
        assert f.metadata.get("help"), f"{method}.{f.name} has no help text"


@pytest.mark.parametrize("method,teacher_name", PAIRS)
def test_method_contract(method, teacher_name, tmp_path):
    teacher = _teacher(teacher_name)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    attributes = (teacher.clip_x0, teacher.prediction_type, teacher.autocast, teacher.net)
    m = _method(method, teacher)
    with NetworkCalls() as calls:
        cost = m.distill(_ctx(tmp_path / "run"))
    # the teacher forward passes the method reports are the rows that went through frozen networks
    assert cost.get("teacher_forwards", 0.0) == calls.frozen_rows, (cost, calls.frozen_rows)
    stage = m.training_stage()
    assert (stage is None) == (not cost), "a method that trains reports its training stage"
    noise, labels = _noise(teacher), _labels(teacher)
    for k in m.default_nfe():
        with NetworkCalls() as calls, torch.no_grad():
            x = m.sampler(k)(noise, *labels)
        assert calls.calls == k, f"{method} NFE {k} made {calls.calls} network calls"
        assert x.shape == noise.shape and torch.isfinite(x).all()
        if labels:  # the samples are of the requested classes
            with torch.no_grad():
                other = m.sampler(k)(noise, (labels[0] + 1) % teacher.num_classes)
            assert not torch.allclose(x, other), f"{method} NFE {k} ignores the class"
    _shipped_student_samples_alike(m, teacher, noise, tmp_path / "student", trains=bool(cost))
    after = teacher.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(v, after[k]) for k, v in before.items())
    assert (teacher.clip_x0, teacher.prediction_type, teacher.autocast, teacher.net) == attributes


def _shipped_student_samples_alike(m, teacher, noise, folder, trains: bool):
    """Every method that trains ships its student (MLflow model, bench export: saved networks
    plus bench.portable's rule), which gives the method's own samples at every NFE it ships."""
    from bench.portable import apply_rule, load_network
    from bench.student_model import write_student

    shipped = m.distilled()
    assert set(shipped) <= set(m.default_nfe()) and bool(shipped) == trains, (sorted(shipped), trains)
    if shipped:
        write_student(shipped, teacher, folder)
    labels = _labels(teacher, len(noise))
    for k, d in shipped.items():
        with torch.no_grad():
            x = apply_rule(d.rule, load_network(folder / "nets" / f"nfe_{k}"), noise, *labels)
            torch.testing.assert_close(x, m.sampler(k)(noise, *labels), rtol=0, atol=1e-6)


@pytest.mark.parametrize("method,teacher_name", PAIRS)
def test_resume_from_a_checkpoint_is_exact(method, teacher_name, tmp_path):
    teacher = _teacher(teacher_name)
    straight = _method(method, teacher)
    if not straight.distill(_ctx(tmp_path)):
        pytest.skip(f"{method} does not train: nothing to resume")
    ckpt = list_checkpoints(tmp_path)[-2]  # one step before the end (the newest two are kept)
    resumed = _method(method, teacher)
    resumed.distill(_ctx(tmp_path, resume_from=ckpt))
    noise = _noise(teacher)
    with torch.no_grad():
        for k in straight.default_nfe():
            assert torch.equal(straight.sampler(k)(noise), resumed.sampler(k)(noise)), (method, k)
