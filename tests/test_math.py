"""Every term of every loss and sampler against an independent float64 reference.

The references here are written from the papers' formulas (DESIGN.md) with numpy and the
closed-form posterior mean of Gaussian data, never by calling the code under test: delete a
weight, shift a time, flip a sign, swap s and t, and one of these tests goes red
(scripts/mutants.py checks that they do). Fast: no training, tiny networks.
"""
import copy
import math

import numpy as np
import pytest
import torch

from bench import config as cfgs
from bench.teachers.analytic import gaussian_teacher
from methods.boot import BOOT, BOOTConfig
from methods.progressive import Progressive, ProgressiveConfig

pytestmark = pytest.mark.fast
CPU = torch.device("cpu")
T = 1000
ABAR = np.cumprod(1 - np.linspace(1e-4, 0.02, T))  # DDPM's linear schedule (Ho et al. 2020)
MU = 0.5 * np.sin(np.arange(4.0))
STD = np.array([0.2, 0.3, 0.4, 0.5])


def alpha_sigma(t):
    """alpha_t, sigma_t in float64 for (fractional) t; t = -1 is 'after the last step' (1, 0).
    The schedule is linear in alpha_bar between integer steps."""
    ab = np.interp(np.asarray(t, dtype=np.float64), np.arange(-1, T), np.concatenate([[1.0], ABAR]))
    return np.sqrt(ab), np.sqrt(1 - ab)


def col(v):
    return np.asarray(v, dtype=np.float64)[:, None]


def posterior_mean(x_t, t):
    """E[x | x_t] for x ~ N(MU, diag(STD^2)), x_t = alpha x + sigma eps (rows of x_t, times t)."""
    a, s = (col(v) for v in alpha_sigma(t))
    return MU + a * STD ** 2 * (x_t - a * MU) / (a ** 2 * STD ** 2 + s ** 2)


def ddim(x, t, s):
    """One deterministic DDIM step t -> s (Song et al. eq. 12, eta = 0) with the exact x0."""
    f = posterior_mean(x, t)
    a_t, s_t = (col(v) for v in alpha_sigma(t))
    a_s, s_s = (col(v) for v in alpha_sigma(s))
    return a_s * f + s_s * (x - a_t * f) / s_t


def trailing(K):
    """The trailing grid (Lin et al. 2024): K steps starting at T - 1."""
    return [int(round(T - i * T / K)) - 1 for i in range(K)]


def _teacher():
    return gaussian_teacher(torch.tensor(MU), torch.tensor(STD))


def _np(x):
    return x.detach().double().numpy()


# -- BOOT -------------------------------------------------------------------------------
T_ROWS = [5.0, 19.0, 20.0, 21.5, 137.0, 500.25, 998.0, 999.0]  # s clamps to -1 for the first two


def _boot(**overrides):
    torch.manual_seed(0)
    cfg = cfgs.replace(BOOTConfig(), {"batch_size": 10, "boundary_fraction": 0.2, "boundary_weight": 3.0,
                                      "mlp_width": 16, **overrides})
    m = BOOT(_teacher(), cfg, CPU)
    m.draw_t = lambda n, gen: torch.tensor(T_ROWS[:n], dtype=torch.float64)  # fixed times
    return m


def test_boot_loss_rows_equal_the_paper_formula():
    """Rows 2..: ||g(eps, s) - SG[g + (1 - r)(f(alpha_t g + sigma_t eps, t) - g)]||^2 / (1 - r)^2 with
    s = max(t - delta, -1) and r = alpha_t sigma_s / (sigma_t alpha_s); rows 0-1: the boundary,
    boundary_weight * ||g(eps, t_max) - y_{t_max}||^2 with y_{t_max} = (1 - sigma) eps / alpha.
    t_draw=trunc (the default) reads a row drawn in (t_max - delta, t_max) at t = t_max (998 here)."""
    m = _boot()
    losses, forwards = m.loss(0, torch.Generator().manual_seed(3))
    eps = torch.randn((10, 4), generator=torch.Generator().manual_seed(3))  # the loss's first draw
    e = _np(eps)
    t = np.array(T_ROWS)
    s = np.maximum(t - 20.0, -1.0)
    t = np.where(t > 999 - 20.0, 999.0, t)
    with torch.no_grad():
        g_t = _np(m.student(eps[2:], torch.tensor(t, dtype=torch.float32)))
        g_s = _np(m.student(eps[2:], torch.tensor(s, dtype=torch.float32)))
        g_max = _np(m.student(eps[:2], torch.full((2,), 999.0)))
    a_t, s_t = alpha_sigma(t)
    a_s, s_s = alpha_sigma(s)
    f = posterior_mean(col(a_t) * g_t + col(s_t) * e[2:], t)
    r = a_t * s_s / (s_t * a_s)
    target = g_t + col(1 - r) * (f - g_t)
    expected_bs = ((g_s - target) ** 2).mean(1) / (1 - r) ** 2
    a_T, s_T = alpha_sigma(999.0)
    expected_boundary = 3.0 * ((g_max - (1 - s_T) * e[:2] / a_T) ** 2).mean(1)
    got = _np(losses)
    np.testing.assert_allclose(got[:2], expected_boundary, rtol=1e-4)
    np.testing.assert_allclose(got[2:], expected_bs, rtol=2e-4)
    assert forwards == pytest.approx(8 / 10)  # one teacher forward per bootstrapping row


def test_boot_teacher_boundary_is_the_teachers_x0_and_costs_a_forward():
    m = _boot(boundary="teacher")
    losses, forwards = m.loss(0, torch.Generator().manual_seed(3))
    eps = torch.randn((10, 4), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        g_max = _np(m.student(eps[:2], torch.full((2,), 999.0)))
    y = posterior_mean(_np(eps[:2]), np.full(2, 999.0))  # f_phi(eps, t_max): x_{t_max} = eps
    np.testing.assert_allclose(_np(losses)[:2], 3.0 * ((g_max - y) ** 2).mean(1), rtol=1e-4)
    assert forwards == pytest.approx(1.0)


def test_boot_boundary_auto_follows_the_first_steps_r():
    """auto: 'definition' where the first unit step keeps y (r > 0.5), else 'teacher'."""
    a1, s1 = alpha_sigma(999.0)
    a0, s0 = alpha_sigma(998.0)
    assert a1 * s0 / (s1 * a0) > 0.5  # the linear schedule keeps y_{t_max}
    assert _boot().boundary_mode == "definition"


def test_boot_guidance_and_its_cost():
    """BOOT's targets are the guided teacher's (guidance itself: tests/test_guidance.py), and
    each guided bootstrap row costs two teacher forwards."""
    from bench.teachers.analytic import gmm2d_params, mixture_teacher

    teacher = mixture_teacher(*gmm2d_params(), conditional=True).replace(guidance_scale=3.0)
    m = BOOT(teacher, cfgs.replace(BOOTConfig(), {"batch_size": 8, "boundary_fraction": 0.25}), CPU)
    eps, c, t = torch.randn(8, 2), torch.arange(8), torch.full((8,), 400.0)
    target, one_minus_r = m.bootstrap_target(eps, t, t - 20, c)
    with torch.no_grad():
        g = m.student(eps, t, c)
    a, s = teacher.coefficients(t, eps)
    f_c = teacher.replace(guidance_scale=1.0).x0(a * g + s * eps, t, c)
    f_u = teacher.replace(guidance_scale=1.0).x0(a * g + s * eps, t, None)
    torch.testing.assert_close(target, g + one_minus_r.float() * (f_u + 3.0 * (f_c - f_u) - g), rtol=1e-5, atol=1e-6)
    assert m.loss(0, torch.Generator().manual_seed(0))[1] == pytest.approx(2 * 6 / 8)


def test_boot_one_step_sampler_reads_the_student_at_t_minus_one():
    """alpha_{-1} = 1, sigma_{-1} = 0: there y is the sample itself."""
    m = _boot()
    noise = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = m.sampler(1)(noise)
        assert torch.equal(x, m.student(noise, torch.full((5,), -1.0)))
        assert not torch.allclose(x, m.student(noise, torch.zeros(5)), atol=1e-4)  # t matters


def test_boot_student_head_reads_the_v_teachers_x0_frozen_at_t_max():
    """g = c_skip eps + c_out net(eps, t) with x0 = alpha x_t - sigma v at t_max: c_skip = alpha,
    c_out = -sigma; an eps-teacher's head is read the same way (its own x0 conversion would
    scale by 1/alpha_{t_max}); a sample-teacher's head is y itself (c_skip 0, c_out 1)."""
    from diffusers import DDPMScheduler

    from bench.student import Student
    from bench.teachers.base import Provenance
    from bench.teachers.diffusers_teacher import unet_teacher
    from conftest import tiny_unet

    a, s = alpha_sigma(999.0)
    for kind, expected in (("v_prediction", (a, -s)), ("epsilon", (a, -s)), ("sample", (0.0, 1.0))):
        teacher = unet_teacher(tiny_unet(), DDPMScheduler(prediction_type=kind), Provenance("t"))
        student = Student(teacher, t_max=999)
        assert (student.c_skip, student.c_out) == pytest.approx(expected, rel=1e-6)


# -- progressive distillation ------------------------------------------------------------
def _progressive(**overrides):
    cfg = cfgs.replace(ProgressiveConfig(), {"batch_size": 12, "start_steps": 8, "end_steps": 1, **overrides})
    return Progressive(_teacher(), cfg, CPU)


def _sample_student(seed=2):
    """A student with a deterministic random network predicting x0 ('sample')."""
    from bench.student import TimeMLP

    torch.manual_seed(seed)
    return _teacher().replace(net=TimeMLP(4, T, 16), prediction_type="sample")


@pytest.mark.parametrize("n", [4, 1])
def test_progressive_round_loss_rows_equal_the_paper_formula(n):
    """max(SNR_t, 1) ||x^ - x~||^2 with x~ = (x_{t''} - (sigma_{t''}/sigma_t) x_t) / (alpha_{t''} -
    (sigma_{t''}/sigma_t) alpha_t), x_{t''} two teacher DDIM steps t -> t' -> t'' on the 2n grid."""
    m, student = _progressive(), _sample_student()
    x_data = torch.randn(50, 4, generator=torch.Generator().manual_seed(7)) * 0.3
    loss = m._round_loss(m.teacher, student, x_data, n)
    losses, forwards = loss(0, torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)  # the loss's draws: data rows, grid positions, noise
    x = x_data[torch.randint(0, 50, (12,), generator=gen)]
    idx = torch.randint(0, n, (12,), generator=gen).numpy()
    eps = torch.randn(x.shape, generator=gen)
    grid, fine = trailing(n), trailing(2 * n)
    t = np.array([grid[i] for i in idx], dtype=np.float64)
    t_mid = np.array([fine[2 * i + 1] for i in idx], dtype=np.float64)
    t_next = np.array([grid[i + 1] if i + 1 < n else -1 for i in idx], dtype=np.float64)
    a, s = alpha_sigma(t)
    x_t = col(a) * _np(x) + col(s) * _np(eps)
    x2 = ddim(ddim(x_t, t, t_mid), t_mid, t_next)
    a2, s2 = alpha_sigma(t_next)
    ratio = col(s2 / s)
    target = (x2 - ratio * x_t) / (col(a2) - ratio * col(a))
    with torch.no_grad():
        x0 = _np(student.net(torch.tensor(x_t, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)))
    weight = np.maximum(a ** 2 / s ** 2, 1.0)
    np.testing.assert_allclose(_np(losses), weight * ((x0 - target) ** 2).mean(1), rtol=1e-4, atol=1e-7)
    assert forwards == 2.0


def test_progressive_fit_loss_imitates_the_teachers_x0():
    """The MLP fit before the first round: max(SNR_t, 1) ||x^ - f_phi(x_t, t)||^2 on the start grid."""
    m, student = _progressive(), _sample_student()
    x_data = torch.randn(50, 4, generator=torch.Generator().manual_seed(7))
    losses, forwards = m._fit_loss(student, x_data)(0, torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)
    x = x_data[torch.randint(0, 50, (12,), generator=gen)]
    idx = torch.randint(0, 8, (12,), generator=gen).numpy()
    eps = torch.randn(x.shape, generator=gen)
    t = np.array([trailing(8)[i] for i in idx], dtype=np.float64)
    a, s = alpha_sigma(t)
    x_t = col(a) * _np(x) + col(s) * _np(eps)
    with torch.no_grad():
        x0 = _np(student.net(torch.tensor(x_t, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)))
    expected = np.maximum(a ** 2 / s ** 2, 1.0) * ((x0 - posterior_mean(x_t, t)) ** 2).mean(1)
    np.testing.assert_allclose(_np(losses), expected, rtol=1e-4, atol=1e-7)
    assert forwards == 1.0


def test_progressive_rounds_halve_from_start_to_end():
    m = _progressive(start_steps=16, end_steps=2)
    assert m._step_counts() == [16, 8, 4, 2]  # 16: the MLP fit of an analytic teacher
    assert m.default_nfe() == (2, 4, 8, 16)


# -- output parameterisations ---------------------------------------------------------------
def test_x_and_epsilon_merges_the_two_heads():
    """Salimans & Ho sec. 4: x0 = sigma^2 x~ + alpha (x_t - sigma eps~); eps from x_t = alpha x0 + sigma eps."""
    out = torch.randn(6, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    teacher = _teacher().replace(net=lambda x, t, c: out, prediction_type="x_and_epsilon")
    x_t = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = np.array([0, 10, 250, 500, 900, 999], dtype=np.float64)
    x0, eps = teacher.predict(x_t, torch.tensor(t))
    a, s = (col(v) for v in alpha_sigma(t))
    o, xt = out.numpy(), x_t.numpy()
    expected = s ** 2 * o[:, :4] + a * (xt - s * o[:, 4:])
    np.testing.assert_allclose(x0.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(eps.numpy(), (xt - a * expected) / s, rtol=1e-9)


def test_x_head_starts_at_alpha_squared_times_the_teachers_x0():
    """add_x_head keeps the eps head and adds a zero x head: x0 starts at alpha^2 (x_t - sigma eps)/alpha."""
    from diffusers import DDPMScheduler

    from bench.student import add_x_head
    from bench.teachers.base import Provenance
    from bench.teachers.diffusers_teacher import unet_teacher
    from conftest import tiny_unet

    teacher = unet_teacher(tiny_unet(), DDPMScheduler(), Provenance("t")).replace(clip_x0=False)
    student = teacher.replace(net=add_x_head(copy.deepcopy(teacher.net)), prediction_type="x_and_epsilon")
    x_t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in (0, 300, 999):
        with torch.no_grad():
            a = float(alpha_sigma(t)[0])
            assert torch.allclose(student.x0(x_t, t), a ** 2 * teacher.x0(x_t, t), atol=1e-5)
    assert student.net.unet.conv_out.out_channels == 2


def test_progressive_gives_eps_teachers_the_x_and_epsilon_student():
    from diffusers import DDPMScheduler

    from bench.teachers.base import Provenance
    from bench.teachers.diffusers_teacher import unet_teacher
    from conftest import tiny_unet

    teacher = unet_teacher(tiny_unet(), DDPMScheduler(), Provenance("t"))
    for kind, expected in (("auto", "x_and_epsilon"), ("teacher", "epsilon"), ("x_and_epsilon", "x_and_epsilon")):
        m = Progressive(teacher, ProgressiveConfig(parameterization=kind), CPU)
        assert m._student_of(m.teacher).prediction_type == expected
    m = Progressive(_teacher(), ProgressiveConfig(), CPU)
    assert m._student_of(m.teacher).prediction_type == "sample"  # x0-teachers keep their output


# -- training precision ---------------------------------------------------------------------
def test_frozen_teachers_run_in_fp32_inside_a_bf16_step():
    """Inside bf16 autocast (the student's precision) the teacher's x0 is the fp32 one, unless
    teacher_precision is autocast; students (progressive) run in the autocast precision."""
    from diffusers import DDPMScheduler

    from bench.teachers.base import Provenance
    from bench.teachers.diffusers_teacher import unet_teacher
    from bench.train import TrainConfig, frozen_teacher
    from conftest import tiny_unet

    teacher = unet_teacher(tiny_unet(), DDPMScheduler(), Provenance("t")).replace(clip_x0=False)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    fp32 = teacher.x0(x, 900)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        default = frozen_teacher(teacher, TrainConfig()).x0(x, 900)
        low = frozen_teacher(teacher, TrainConfig(teacher_precision="autocast")).x0(x, 900)
    assert default.dtype == torch.float32 and torch.equal(default, fp32)
    assert (low.float() - fp32).abs().max() > 1e-3  # bf16 error times sigma/alpha ~ 3
    assert BOOT(teacher, BOOTConfig(), CPU).teacher.autocast is False
    m = Progressive(teacher, ProgressiveConfig(), CPU)
    assert m.teacher.autocast is False and m._student_of(m.teacher).autocast is True


def test_progressive_round_teachers_are_in_eval_mode(tmp_path):
    """Dropout in a round's teacher would make its targets random: finished students are frozen
    in eval mode, whatever mode training left them in."""
    from diffusers import DDPMScheduler

    from bench.method import DistillContext
    from bench.teachers.base import Provenance
    from bench.teachers.diffusers_teacher import unet_teacher
    from conftest import tiny_unet

    teacher = unet_teacher(tiny_unet(dropout=0.5).eval(), DDPMScheduler(), Provenance("t"))
    teacher.dataset = lambda: torch.rand(16, 1, 8, 8) * 2 - 1
    m = Progressive(teacher, ProgressiveConfig(start_steps=4, end_steps=1, iterations=1, batch_size=4,
                                               checkpoint_every=0), CPU)
    m.distill(DistillContext(log=lambda *a: None, device=CPU, workdir=tmp_path, progress=False))
    x = torch.randn(2, 1, 8, 8)
    for r in m.rounds.values():
        assert not any(mod.training for mod in r.student.net.modules())
        with torch.no_grad():
            assert torch.equal(r.student.x0(x, 500), r.student.x0(x, 500))


def test_psnr_and_teacher_mse_are_the_textbook_figures():
    from bench.evaluator import psnr

    assert psnr(0.01) == pytest.approx(10 * math.log10(4 / 0.01))  # peak: the data range (2)
    assert psnr(0.01, (0.0, 1.0)) == pytest.approx(20.0)


# -- the evaluator's formulas ---------------------------------------------------------------
def test_seeds_of_different_runs_share_no_noise():
    """Sample i of seed a and sample j of seed b are different draws unless (a, i) = (b, j): a seed
    shift must not reuse another run's noise (seed + i would)."""
    from bench.evaluator import seed_noise

    a, b = seed_noise(3, range(64), (2,)), seed_noise(4, range(64), (2,))
    assert torch.cdist(a, b).min() > 0


def test_teacher_mse_is_the_mean_squared_difference_to_the_anchor():
    from bench.evaluator import ReferenceStats, SampleSpec, evaluate
    from bench.features import get_extractor

    spec = SampleSpec((4,), 40, 0, 16, CPU)
    ref = ReferenceStats.from_features(torch.randn(100, 4, generator=torch.Generator().manual_seed(0)))
    from bench.evaluator import seed_noise

    anchor = seed_noise(0, range(30), (4,)) - 0.1  # the sampler returns its noise: diff is 0.1 everywhere
    ev = evaluate(lambda z: z, spec, ref, get_extractor("points"), metrics=("fid",), anchor=anchor)
    assert ev.teacher_mse == pytest.approx(0.01, rel=1e-6)
