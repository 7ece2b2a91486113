"""Progressive distillation: the target against its defining property, and a run."""
import pytest
import torch

from bench import config as cfgs
from bench.errors import BenchError
from bench.sampling import ddim_step
from bench.teachers import load_teacher
from bench.teachers.analytic import gaussian_teacher
from methods.progressive import Progressive, ProgressiveConfig, two_step_target

CPU = torch.device("cpu")


@pytest.mark.fast
@pytest.mark.parametrize("t, t_mid, t_next", [(999, 749, 499), (499, 249, -1), (30, 20, 10), (7, 3, -1)])
def test_one_student_step_lands_where_two_teacher_steps_land(t, t_mid, t_next):
    mu = torch.linspace(-0.5, 0.5, 6, dtype=torch.float64)
    teacher = gaussian_teacher(mu, torch.full((6,), 0.3, dtype=torch.float64))
    x_t = torch.randn(32, 6, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    target = two_step_target(teacher, x_t, t, t_mid, t_next)
    two_steps = ddim_step(teacher, ddim_step(teacher, x_t, t, t_mid), t_mid, t_next)
    # a student predicting x0 = x~ at t makes one DDIM step t -> t_next
    a_t, s_t = teacher.coefficients(t, x_t)
    a_n, s_n = teacher.coefficients(t_next, x_t)
    one_step = a_n * target + s_n * (x_t - a_t * target) / s_t
    assert torch.allclose(one_step, two_steps, atol=1e-10)
    vec = two_step_target(teacher, x_t, torch.full((32,), float(t)), torch.full((32,), float(t_mid)),
                          torch.full((32,), float(t_next)))
    assert torch.allclose(vec, target, atol=1e-12)  # per-row step indices give the same


@pytest.mark.fast
def test_config_validation():
    with pytest.raises(ValueError, match="power of two"):
        ProgressiveConfig(start_steps=48, end_steps=1)
    with pytest.raises(ValueError, match="data must be one of real, synthetic; got web"):
        ProgressiveConfig(data="web")


@pytest.mark.parametrize("data", ["real", "synthetic"])
def test_rounds_halve_and_count_cost(data, tmp_path):
    from bench.method import DistillContext

    teacher = load_teacher("digits")
    original = {k: v.clone() for k, v in teacher.net.state_dict().items()}
    cfg = cfgs.replace(ProgressiveConfig(), dict(start_steps=8, end_steps=2, iterations=3, batch_size=8,
                                                 data=data, synthetic_samples=16, synthetic_steps=4))
    m = Progressive(teacher, cfg, CPU)
    logs = []
    cost = m.distill(DistillContext(log=lambda d, s: logs.append((s, d)), device=CPU, workdir=tmp_path,
                                    progress=False))
    assert sorted(m.rounds) == [2, 4] and m.default_nfe() == (2, 4, 8)
    # the teacher is untouched, the rounds' students are distinct networks
    assert all(torch.equal(v, teacher.net.state_dict()[k]) for k, v in original.items())
    students = {n: r.student for n, r in m.rounds.items()}
    assert students[2].net is not students[4].net and students[4].net is not teacher.net
    assert teacher.clip_x0 and students[2].clip_x0
    noise = torch.randn(3, 1, 8, 8)
    from bench.sampling import ddim_sample
    assert torch.equal(m.sampler(8)(noise), ddim_sample(teacher, noise, teacher.schedule.timesteps(8)))
    assert cost["train_iterations"] == 6
    expected_nfe = 2 * 8 * 6 + (16 * 4 if data == "synthetic" else 0)  # 2 teacher steps per row
    assert cost["teacher_forwards"] == expected_nfe
    assert ("data_seconds" in cost) == (data == "synthetic")
    assert [s for s, d in logs if "round/steps" in d] == [3, 6]
    x = m.sampler(2)(torch.randn(4, 1, 8, 8))
    assert x.shape == (4, 1, 8, 8) and x.abs().max() <= 1
    with pytest.raises(BenchError, match=r"NFE \(2, 4, 8\)"):
        m.check_nfe(3)
