"""DMD2 and SiD against their formulas (float64 references written here from the papers),
their generator, time draws and fake-score loss, and the two-network training loop."""
import math

import pytest
import torch
from scipy import stats

from bench import config as cfgs
from bench.matching import Generator, denoising_loss, karras_sigma, native_target
from bench.method import DistillContext
from bench.schedule import NoiseSchedule
from bench.teachers import load_teacher
from bench.teachers.analytic import gaussian_teacher
from bench.train import Diverged
from methods.dmd2 import DMD2, DMD2Config
from methods.sid import SiD, SiDConfig

pytestmark = pytest.mark.fast
CPU = torch.device("cpu")
D = 6
MU_REAL, S_REAL = torch.linspace(-0.5, 0.5, D, dtype=torch.float64), torch.full((D,), 0.3, dtype=torch.float64)
MU_FAKE, S_FAKE = MU_REAL + 0.2, torch.full((D,), 0.5, dtype=torch.float64)


def _method(cls, teacher, **overrides):
    torch.manual_seed(0)
    return cls(teacher, cfgs.replace(cls.Config(), overrides), CPU)


def _ctx(tmp_path, logs=None):
    return DistillContext(log=lambda m, s: logs.append((s, m)) if logs is not None else None, device=CPU,
                          seed=0, workdir=tmp_path, progress=False)


def posterior_mean(x_t, a, s, mu, std):
    """E[x0 | x_t] for x0 ~ N(mu, diag(std^2)), written out: the exact Gaussian denoiser."""
    return mu + a * std ** 2 * (x_t - a * mu) / (a ** 2 * std ** 2 + s ** 2)


def _gaussian_pair(cls, **overrides):
    """A method on the exact Gaussian teacher whose fake score is another exact Gaussian."""
    m = _method(cls, gaussian_teacher(MU_REAL, S_REAL), **overrides)
    m.fake = gaussian_teacher(MU_FAKE, S_FAKE)
    return m


def _inputs(m, n=5):
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(n, D, generator=gen, dtype=torch.float64) * 0.4).requires_grad_(True)
    t = torch.tensor([30.0, 200.0, 500.0, 800.0, 970.0])[:n]
    return x, t, torch.randn(n, D, generator=gen, dtype=torch.float64)


def _coefficients(t):
    sch = NoiseSchedule.linear()
    return sch.alpha(t.double())[:, None], sch.sigma(t.double())[:, None]


def test_dmd2_gradient_is_the_normalised_score_difference():
    """dL/dx = (f_psi - f_phi) / mean|x - f_phi| / numel (DMD eq. 7-8; 0.5 ||x - SG(x - grad)||^2)."""
    m = _gaussian_pair(DMD2)
    x, t, eps = _inputs(m)
    loss = m.loss_at(x, t, eps).mean()
    loss.backward()
    a, s = _coefficients(t)
    x_t = a * x.detach() + s * eps
    f_phi, f_psi = posterior_mean(x_t, a, s, MU_REAL, S_REAL), posterior_mean(x_t, a, s, MU_FAKE, S_FAKE)
    weight = (x.detach() - f_phi).abs().mean(1, keepdim=True)
    reference = (f_psi - f_phi) / weight
    torch.testing.assert_close(x.grad.double() * x.numel(), reference, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(loss.double(), 0.5 * reference.pow(2).mean(), rtol=2e-5, atol=1e-8)


def test_sid_loss_and_gradient_match_eq_23_in_float64():
    """(1 - alpha)||f_phi - f_psi||^2 + (f_phi - f_psi)^T (f_psi - x_g), per sample over SG(mean|x_g - f_phi|),
    gradients through both scores into x_g; checked at alpha = 1.2 and 0.5."""
    for alpha in (1.2, 0.5):
        m = _gaussian_pair(SiD, alpha=alpha)
        x, t, eps = _inputs(m)
        loss = m.loss_at(x, t, eps)
        (gx,) = torch.autograd.grad(loss.sum(), x)
        xr = x.detach().clone().requires_grad_(True)
        a, s = _coefficients(t)
        x_t = a * xr + s * eps
        f_phi, f_psi = posterior_mean(x_t, a, s, MU_REAL, S_REAL), posterior_mean(x_t, a, s, MU_FAKE, S_FAKE)
        d = f_phi - f_psi
        weight = (xr - f_phi).abs().mean(1).detach()
        reference = ((1 - alpha) * d.pow(2).mean(1) + (d * (f_psi - xr)).mean(1)) / weight
        (g_ref,) = torch.autograd.grad(reference.sum(), xr)
        torch.testing.assert_close(loss.double(), reference.detach(), rtol=2e-5, atol=1e-7)
        torch.testing.assert_close(gx.double(), g_ref, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("cls", [DMD2, SiD])
def test_a_perfect_fake_score_gives_the_generator_no_gradient(cls):
    """f_psi = f_phi (the fake score a copy of the teacher, as both start): nothing to match. SiD's
    gradient passes through both networks' backward passes, which round differently in float32
    (one has trainable weights): zero to 1e-6; a fake 1% off the teacher moves G 1000x more."""
    m = _method(cls, load_teacher("digits"))

    def grad_norm():
        x = m.G(*m.noise(4, torch.Generator().manual_seed(0)))
        loss = m.generator_loss(x, torch.Generator().manual_seed(1)).sum()
        grads = torch.autograd.grad(loss, [p for p in m.G.parameters()], allow_unused=True)
        return float(loss.detach()), max(float(g.abs().max()) for g in grads if g is not None)

    loss, perfect = grad_norm()
    assert loss == 0.0 and perfect < 1e-6
    with torch.no_grad():
        for p in m.fake.net.parameters():
            p.mul_(1.01)
    assert grad_norm()[1] > 1000 * max(perfect, 1e-9)


@pytest.mark.parametrize("teacher_name", ["digits", "digits_eps"])
@pytest.mark.parametrize("cls", [DMD2, SiD])
def test_generator_starts_as_the_teachers_x0_from_pure_noise(cls, teacher_name):
    """G(z) = f_phi(sigma_t z, t_init): t_init = t_max for DMD2, sigma_t / alpha_t = 2.5 for SiD (an
    eps-teacher at t_max reads its head as v: 1/alpha_{t_max} = 157 would blow up its error)."""
    teacher = load_teacher(teacher_name)
    m = _method(cls, teacher)
    G, sch = m.G, teacher.schedule
    expected_t = 999.0 if cls is DMD2 else None
    if expected_t is not None:
        assert G.t_init == expected_t
    else:
        assert float(sch.sigma(G.t_init) / sch.alpha(G.t_init)) == pytest.approx(2.5, rel=1e-3)
    assert G.in_scale == pytest.approx(float(sch.sigma(G.t_init)))
    z = torch.randn(3, *teacher.sample_shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((3,), G.t_init)
    x_in = G.in_scale * z
    with torch.no_grad():
        out = teacher.output(x_in, t)
        a, s = float(sch.alpha(G.t_init)), float(sch.sigma(G.t_init))
        if teacher.prediction_type == "epsilon" and a < 0.1:
            expected = a * x_in - s * out
        else:
            expected = teacher.replace(clip_x0=False).predict(x_in, t)[0]
        torch.testing.assert_close(G(z), expected, rtol=1e-5, atol=1e-5)


def test_dmd2_times_span_two_to_ninety_eight_percent_of_T():
    m = _method(DMD2, load_teacher("gaussian"))
    t = m.times(20000, torch.Generator().manual_seed(0))
    assert (float(t.min()), float(t.max())) == (20.0, 980.0)
    assert torch.equal(t, t.round())


def test_sid_times_follow_edms_grid_up_to_t_max():
    """sigma_t / alpha_t = sigma(1 - u) with u ~ U[0, 0.8]: mapped back, u is uniform (KS test)."""
    teacher = load_teacher("gaussian")
    m = _method(SiD, teacher)
    t = m.times(4000, torch.Generator().manual_seed(0)).double()
    sigma_ve = teacher.schedule.sigma(t) / teacher.schedule.alpha(t)
    # the largest of 4000 draws, and t_of_log_snr's linear pieces against alpha_bar's: within 1%
    assert float(sigma_ve.max()) == pytest.approx(float(karras_sigma(torch.tensor(0.2))), rel=1e-2)
    assert float(karras_sigma(torch.tensor(0.2))) == pytest.approx(24.41, abs=0.01)
    lo_teacher = float(teacher.schedule.sigma(0.0) / teacher.schedule.alpha(0.0))  # 0.01 > sigma_min 0.002
    inside = sigma_ve > lo_teacher * 1.001  # draws below the teacher's first step are clamped to t = 0
    hi, lo = 80.0 ** (1 / 7), 0.002 ** (1 / 7)
    u = 1 - (sigma_ve[inside] ** (1 / 7) - hi) / (lo - hi)
    u_lo = 1 - (lo_teacher ** (1 / 7) - hi) / (lo - hi)
    assert stats.kstest(u.numpy(), stats.uniform(u_lo, 0.8 - u_lo).cdf).pvalue > 0.01
    assert float((~inside).float().mean()) == pytest.approx(u_lo / 0.8, abs=0.02)


def test_fake_score_noise_laws_uniform_t_and_sids_edm_log_normal():
    """By default f_psi learns at t ~ U{0..T-1} (DMD2 and SiD); SiD's fake_noise=edm, its code's law,
    at ln sigma ~ N(-1.2, 1.2^2) (KS test on ln(sigma_t / alpha_t) within the teacher's range;
    draws above or below it are clamped to its ends)."""
    teacher = load_teacher("gaussian")
    gen = torch.Generator().manual_seed(0)
    t = _method(SiD, teacher, fake_noise="edm").fake_times(4000, gen).double()
    ln_sigma = (teacher.schedule.sigma(t) / teacher.schedule.alpha(t)).log()
    lo, hi = (float((teacher.schedule.sigma(v) / teacher.schedule.alpha(v)).log()) for v in (0.0, teacher.T - 1.0))
    inside = (ln_sigma > lo + 1e-3) & (ln_sigma < hi - 1e-3)
    law = stats.truncnorm((lo + 1e-3 + 1.2) / 1.2, (hi - 1e-3 + 1.2) / 1.2, loc=-1.2, scale=1.2)
    assert stats.kstest(ln_sigma[inside].numpy(), law.cdf).pvalue > 0.01
    assert float((~inside).float().mean()) == pytest.approx(stats.norm(-1.2, 1.2).cdf(lo), abs=0.01)
    t_uniform = _method(SiD, teacher).fake_times(4000, gen)
    t_dmd2 = _method(DMD2, teacher).fake_times(20000, gen)
    for draws in (t_uniform, t_dmd2):
        assert torch.equal(draws, draws.round()) and (float(draws.min()), float(draws.max())) == (0.0, 999.0)


@pytest.mark.parametrize("cls", [DMD2, SiD])
def test_the_fake_score_step_draws_its_times_from_fake_times(cls, monkeypatch):
    m = _method(cls, load_teacher("gmm2d"), batch_size=8, mlp_width=16)
    monkeypatch.setattr(m, "fake_times", lambda n, gen: torch.full((n,), 7.0))
    loss, forwards = m._fake_step(0, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    z, cond = m.noise(8, gen)
    x = m.G(z, cond).detach()
    expected = denoising_loss(m.fake, x, torch.full((8,), 7.0), torch.randn(x.shape, generator=gen), cond)
    torch.testing.assert_close(loss, expected)
    assert forwards == 0.0


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
def test_fake_score_loss_is_the_teachers_own_denoising_loss(kind):
    x0 = torch.randn(4, D, dtype=torch.float64)
    eps = torch.randn(4, D, dtype=torch.float64)
    t = torch.tensor([0.0, 10.0, 500.0, 999.0])
    a, s = _coefficients(t)
    target = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}[kind]
    assert torch.allclose(native_target(kind, x0, eps, a, s), target)
    fake = gaussian_teacher(MU_REAL, S_REAL).replace(prediction_type=kind)
    out = fake.output(a * x0 + s * eps, t)
    torch.testing.assert_close(denoising_loss(fake, x0, t, eps).double(), (out - target).pow(2).mean(1))


def test_fake_updates_per_generator_step_and_the_fake_loss_is_logged(tmp_path):
    logs = []
    m = _method(DMD2, load_teacher("gmm2d"), iterations=3, fake_updates=5, fake_warmup=0, batch_size=8,
                checkpoint_every=0, eval_every=0, log_every=1, mlp_width=16, fake_lr=3e-3)
    from bench.train import Trainer

    trainer = Trainer(m.training_stage(), _ctx(tmp_path, logs))
    trainer.fit()
    fake_opt = trainer.parts["fake"][1]
    assert fake_opt.param_groups[0]["initial_lr"] == 3e-3 and trainer.opt.param_groups[0]["initial_lr"] == 1e-4
    assert [int(s["step"]) for s in fake_opt.state.values()][:1] == [15]
    assert [int(s["step"]) for s in trainer.opt.state.values()][:1] == [3]
    assert all("train/loss_fake" in metrics for _, metrics in logs)
    assert [metrics["train/teacher_forwards"] for _, metrics in logs] == [8.0, 16.0, 24.0]


def test_the_generator_waits_while_the_fake_score_warms_up(tmp_path):
    """fake_warmup = 2: G's weights (and the teacher forwards) stay put for 2 steps, then move."""
    m = _method(SiD, load_teacher("gmm2d"), iterations=2, fake_warmup=2, batch_size=8, checkpoint_every=0,
                eval_every=0, mlp_width=16, ema_decay=0.0)
    start = [p.detach().clone() for p in m.G.parameters()]
    assert m.distill(_ctx(tmp_path))["teacher_forwards"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(start, m.G.parameters()))
    m = _method(SiD, load_teacher("gmm2d"), iterations=3, fake_warmup=2, batch_size=8, checkpoint_every=0,
                eval_every=0, mlp_width=16, ema_decay=0.0)
    assert m.distill(_ctx(tmp_path))["teacher_forwards"] == 8.0
    assert not all(torch.equal(a, b) for a, b in zip(start, m.G.parameters()))


def test_a_diverging_fake_score_stops_training_by_name(tmp_path):
    m = _method(SiD, load_teacher("gmm2d"), iterations=2, batch_size=4, checkpoint_every=0, eval_every=0,
                mlp_width=16)
    with torch.no_grad():
        next(m.fake.net.parameters()).fill_(math.nan)
    with pytest.raises(Diverged, match="fake loss is nan"):
        m.distill(_ctx(tmp_path))


def test_one_step_rule_reads_the_generators_input_scale():
    from bench.portable import apply_rule

    m = _method(SiD, load_teacher("digits"))
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(apply_rule(m.G.rule(), m.G.net, z), m.G(z), rtol=0, atol=1e-6)
        assert not torch.allclose(apply_rule({**m.G.rule(), "in_scale": 1.0}, m.G.net, z), m.G(z))
    assert isinstance(m.G, Generator)
    from bench.model_card import describe_rule

    assert f"x_in = {m.G.in_scale!r} * eps" in describe_rule(m.G.rule())  # the card states the input scale
