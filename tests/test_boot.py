"""BOOT against its definition (DESIGN.md) and against exact teachers."""

import pytest
import torch

from bench import config as cfgs
from bench.method import DistillContext
from bench.sampling import ddim_step
from bench.teachers import load_teacher
from bench.teachers.analytic import exact_ode_map, gaussian_teacher, gmm2d_params
from conftest import on_requested_component
from methods.boot import BOOT, BOOTConfig

CPU = torch.device("cpu")


def _ctx(tmp_path=None, logs=None, resume_from=None):
    return DistillContext(log=lambda m, s: logs.append((s, m)) if logs is not None else None,
                          device=CPU, seed=0, workdir=tmp_path or "checkpoints", progress=False,
                          resume_from=resume_from)


def _boot(teacher, **overrides):
    return BOOT(teacher, cfgs.replace(BOOTConfig(), overrides), CPU)


@pytest.mark.fast
def test_target_is_one_teacher_ddim_step_in_y():
    torch.manual_seed(0)
    teacher = load_teacher("gmm2d")
    m = _boot(teacher)
    eps = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(30, 999, 64)
    s = t - 20
    target, one_minus_r = m.bootstrap_target(eps, t, s, None)
    # the same step done in x-space by the DDIM sampler, then mapped to y
    with torch.no_grad():
        g = m.student(eps, t)
    e64, g64 = eps.double(), g.double()  # the reference in float64: y = (x - sigma eps) / alpha
    for i in range(0, 64, 9):  # divides by alpha_s ~ 0.01 near t_max
        a_t, sig_t = teacher.coefficients(t[i], e64[i:i + 1])
        x_t = a_t * g64[i:i + 1] + sig_t * e64[i:i + 1]
        x_s = ddim_step(teacher, x_t, float(t[i]), float(s[i]))
        a_s, sig_s = teacher.coefficients(s[i], e64[i:i + 1])
        y_s = (x_s - sig_s * e64[i:i + 1]) / a_s
        assert torch.allclose(target[i:i + 1].double(), y_s, atol=1e-5, rtol=1e-4), (target[i], y_s)
    assert not target.requires_grad
    r = m.ratio(t, s)
    sch = teacher.schedule
    assert torch.allclose(one_minus_r.flatten(), 1 - sch.alpha(t) * sch.sigma(s) / (sch.sigma(t) * sch.alpha(s)))
    assert bool(((r > 0) & (r < 1)).all())


@pytest.mark.fast
def test_gradients_flow_only_through_the_s_branch():
    teacher = load_teacher("gmm2d")
    m = _boot(teacher, batch_size=16)
    gen = torch.Generator().manual_seed(3)
    losses, _ = m.loss(0, gen)
    grads = torch.autograd.grad(losses.mean(), list(m.student.parameters()))
    # recompute with the same draws, but with every target explicitly a constant
    gen = torch.Generator().manual_seed(3)
    calls = []
    original = m.student.forward

    def spy(eps, t, cond=None):
        calls.append(torch.is_grad_enabled())
        return original(eps, t, cond)

    m.student.forward = spy
    losses2, _ = m.loss(0, gen)
    assert calls == [False, True]  # t-branch without grad, then the s-branch with grad
    assert torch.allclose(losses, losses2)
    for g in grads:
        assert torch.isfinite(g).all()


@pytest.mark.fast
def test_boundary_targets():
    teacher = load_teacher("gaussian")
    eps = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    m = _boot(teacher, boundary="definition")
    e64 = eps.double()
    a, s = teacher.coefficients(999, e64)  # y = (x - sigma eps) / alpha with x = eps, in float64
    assert torch.allclose(m.boundary_target(eps, None).double(), (e64 - s * e64) / a, atol=1e-6)
    m = _boot(teacher, boundary="teacher")
    assert torch.allclose(m.boundary_target(eps, None), teacher.x0(eps, 999))
    # auto: the linear DDPM schedule keeps y_{t_max} in its first step (r ~ 1), so 'definition';
    # the digits teacher's cosine schedule forgets it (r ~ 0), so 'teacher'
    assert _boot(teacher).boundary_mode == "definition"
    assert _boot(load_teacher("digits")).boundary_mode == "teacher"


@pytest.mark.fast
def test_boundary_rows_of_the_loss():
    """The first ceil(B * boundary_fraction) rows are boundary_weight * |g(eps, t_max) - y_{t_max}|^2."""
    torch.manual_seed(0)
    teacher = load_teacher("gaussian")
    m = _boot(teacher, batch_size=16, boundary_fraction=0.25, boundary_weight=3.0)
    losses, _ = m.loss(0, torch.Generator().manual_seed(4))
    eps = torch.randn((16, 16), generator=torch.Generator().manual_seed(4))[:4]  # same first draw
    with torch.no_grad():
        g = m.student(eps, torch.full((4,), 999.0))
    expected = 3.0 * (g - m.boundary_target(eps, None)).pow(2).mean(1)
    assert torch.allclose(losses[:4].detach(), expected, rtol=1e-5)


def test_checkpoint_resume_is_exact(tmp_path):
    teacher = load_teacher("gmm2d")
    straight = _boot(teacher, iterations=20, batch_size=16, checkpoint_every=10)
    straight.distill(_ctx(tmp_path / "a"))
    ckpt = tmp_path / "a" / "checkpoint_0000010.pt"
    resumed = _boot(teacher, iterations=20, batch_size=16)
    resumed.distill(_ctx(tmp_path / "b", resume_from=ckpt))
    for p, q in zip(straight.ema.parameters(), resumed.ema.parameters()):
        assert torch.equal(p, q)


def test_one_step_matches_exact_ode_map_on_gaussian():
    """BOOT learns the teacher's DDIM trajectory at step delta (T / delta = 50 DDIM steps), not
    the exact ODE, whose own first-order error is known here. So the tolerance is DDIM-50's
    error plus a margin for fitting: per-dimension mean within 0.03, std ratio within 0.1 of
    DDIM-50's, and RMSE to the exact map at most DDIM-50's + 0.03."""
    from bench.sampling import ddim_sample

    mu = torch.linspace(-0.5, 0.5, 4, dtype=torch.float64)
    std = torch.tensor([0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    teacher = gaussian_teacher(mu, std)
    torch.manual_seed(0)
    m = _boot(teacher, iterations=3000, lr=1e-3, batch_size=64, mlp_width=128, delta=20)
    eps = torch.randn(4000, 4, generator=torch.Generator().manual_seed(7))

    def start_error(student):
        with torch.no_grad():
            return (student(eps, torch.full((4000,), 999.0)) - m.boundary_target(eps, None)).abs().mean()

    untrained = start_error(m.student)
    logs = []
    m.distill(_ctx(logs=logs))
    with torch.no_grad():
        x = m.sampler(1)(eps).double()
    exact = exact_ode_map(eps.double(), mu, std, teacher.schedule, 999)
    ddim = ddim_sample(teacher, eps.double(), teacher.schedule.timesteps(50))
    assert (x.mean(0) - mu).abs().max() < 0.03, x.mean(0) - mu
    assert (x.std(0) / std - ddim.std(0) / std).abs().max() < 0.1, (x.std(0) / std, ddim.std(0) / std)
    rmse, rmse_ddim = (x - exact).pow(2).mean().sqrt(), (ddim - exact).pow(2).mean().sqrt()
    assert rmse < rmse_ddim + 0.03, (rmse, rmse_ddim)
    # the start of the trajectory stays pinned: within 0.04 (mean abs), small next to the
    # samples' spread (std 0.2 to 0.5); the loss rows themselves are checked in
    # test_boundary_rows_of_the_loss
    assert start_error(m.ema) < 0.04, (start_error(m.ema), untrained)
    losses = [m_["train/loss"] for _, m_ in logs]
    assert sum(losses[-10:]) < sum(losses[:10])


def test_gmm2d_covers_all_modes():
    """Every one of the 8 modes gets its share, and one step lands on the modes more often
    than DDIM with 10 steps (0.36 within 3 std); DDIM-50 reaches 0.98, so there is room.
    Measured (seed 0): 0.503 at 3000 steps (0.39 at 1500, 0.42 at 2000)."""
    from bench.sampling import ddim_sample

    torch.manual_seed(0)  # the student's initial weights: not whatever the tests before left
    teacher = load_teacher("gmm2d")
    m = _boot(teacher, iterations=3000, lr=1e-3, batch_size=64)
    m.distill(_ctx())
    eps = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5))
    means = gmm2d_params()[0].float()

    def on_mode(x):
        nearest = torch.cdist(x.float(), means).min(1)
        return torch.bincount(nearest.indices, minlength=8), float((nearest.values < 0.15).float().mean())

    with torch.no_grad():
        counts, sharp = on_mode(m.sampler(1)(eps))
    _, sharp_ddim10 = on_mode(ddim_sample(teacher, eps, teacher.schedule.timesteps(10)))
    assert bool((counts > 2000 / 8 * 0.75).all()), counts
    assert sharp > sharp_ddim10 + 0.1, (sharp, sharp_ddim10)


def test_boot_run_logs_training_and_student(tracking_uri, capsys):
    from mlflow.tracking import MlflowClient

    from bench.cli import main

    assert main(["run", "--method", "boot", "--teacher", "gmm2d", "--num-samples", "200",
                 "--set", "iterations=40", "--set", "eval_every=20", "--set", "eval_samples=100",
                 "--set", "batch_size=32", "--tracking-uri", tracking_uri, "--quiet"]) == 0
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("distill-bench").experiment_id])
    rid = run.info.run_id
    assert [m.step for m in client.get_metric_history(rid, "fid")] == [1]  # BOOT is one-step
    assert [m.step for m in client.get_metric_history(rid, "train/fid")] == [20, 40]
    nfe = client.get_metric_history(rid, "train/teacher_forwards")
    assert nfe[-1].step == 40 and nfe[-1].value == 40 * (32 - 4)  # 4 boundary rows need no teacher
    assert {"train/loss", "train/seconds", "train/images_per_second", "distill_seconds",
            "teacher_forwards", "train_seconds"} <= set(run.data.metrics)
    assert run.data.params["method.delta"] == "20.0"
    assert {"student.safetensors", "training_curve.png"} <= {f.path for f in client.list_artifacts(rid)}


def test_boot_rejects_multi_step_nfe(tracking_uri, capsys):
    from bench.cli import main

    assert main(["run", "--method", "boot", "--teacher", "gmm2d", "--nfe", "2",
                 "--tracking-uri", tracking_uri, "--quiet"]) == 2
    assert "NFE 2 is outside 1..1" in capsys.readouterr().err


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_boot_trains_on_diffusers_teachers(prediction_type, tmp_path):
    """The hub path: a UNet teacher (here tiny, random) is copied into the student and trained."""
    from diffusers import DDPMScheduler

    from bench.teachers.base import Provenance
    from bench.teachers.diffusers_teacher import unet_teacher
    from conftest import tiny_unet

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type=prediction_type)
    teacher = unet_teacher(tiny_unet(), sched, Provenance("test"))
    m = _boot(teacher, iterations=3, batch_size=8)
    assert m.boundary_mode == "definition"  # linear DDPM: alpha_{t_max} = 0.0064, r ~ 0.97
    before = [p.clone() for p in m.student.parameters()]
    cost = m.distill(_ctx(tmp_path))
    assert cost["teacher_forwards"] == 3 * (8 - 1)
    assert any(not torch.equal(a, b) for a, b in zip(before, m.student.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(teacher.net.unet.parameters(), tiny_unet().parameters()))
    x = m.sampler(1)(torch.randn(4, 1, 8, 8))
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()


@pytest.mark.fast
def test_trunc_draw_spends_rows_where_the_trajectory_moves():
    """digits' cosine schedule (beta capped at 0.999) drops log-SNR by 6.9 in its last step, so
    logsnr puts ~23% of the rows at t >= 998 and ~43% above t_max - delta. trunc gives that
    first window the share of one delta-step (delta / t_max) and is uniform in log-SNR below
    it; on the linear schedule, which has no such step, it matches logsnr below the window."""
    n, gen = 200_000, lambda: torch.Generator().manual_seed(0)
    digits = load_teacher("digits")
    assert float((_boot(digits, t_draw="logsnr").draw_t(n, gen()) >= 998).double().mean()) > 0.2
    t = _boot(digits).draw_t(n, gen())  # the default
    assert float((t > 979).double().mean()) == pytest.approx(20 / 999, abs=3e-3)
    lam = digits.schedule.log_snr(t[t <= 979])  # uniform in log-SNR on [lambda(979), lambda(0)]
    lo, hi = float(digits.schedule.log_snr(979)), float(digits.schedule.log_snr(0))
    assert float(((lam - lo) / (hi - lo)).mean()) == pytest.approx(0.5, abs=5e-3)
    lin = load_teacher("gaussian")
    a, b = _boot(lin, t_draw="logsnr").draw_t(n, gen()), _boot(lin).draw_t(n, gen())
    for edge in (20, 100, 500, 900):
        assert float((a < edge).double().mean()) == pytest.approx(float((b < edge).double().mean()), abs=0.01)


@pytest.mark.fast
def test_trunc_reads_the_student_only_where_it_is_trained():
    """Every input g(eps, t) is a trained point: t_max (the boundary) or t <= t_max - delta (some
    row's s); rows drawn in (t_max - delta, t_max) bootstrap from t_max to s = t - delta."""
    m = _boot(load_teacher("gmm2d"), batch_size=4096)
    seen = []
    original = m.bootstrap_target
    m.bootstrap_target = lambda eps, t, s, c: seen.append((t, s)) or original(eps, t, s, c)
    for i in range(3):
        m.loss(i, torch.Generator().manual_seed(i))
    t, s = torch.cat([a for a, _ in seen]), torch.cat([b for _, b in seen])
    assert bool(((t == 999) | (t <= 979)).all()) and bool(((s >= -1) & (s <= 979)).all())
    top = t == 999
    assert 0.01 < float(top.double().mean()) < 0.035 and bool((s[top] > 959).all())
    assert torch.allclose((t - s)[~top & (s > -1)], torch.tensor(20.0, dtype=t.dtype))


@pytest.mark.fast
def test_the_mlp_student_reads_the_class():
    """The review's failing case (issue #19): g(eps, -1, c) was the same for every class c. The
    MLP student of a class-conditional teacher embeds c (row num_classes: no class); an
    unconditional teacher's MLP keeps its old inputs, so networks saved before load unchanged."""
    from bench.portable import TimeMLP
    from bench.teachers.analytic import gmm2d_params, mixture_teacher

    m = _boot(mixture_teacher(*gmm2d_params(), conditional=True))
    eps, t = torch.randn(1, 2).expand(8, 2), torch.full((8,), -1.0)
    with torch.no_grad():
        g = m.student(eps, t, torch.arange(8))
        unconditional = m.student(eps[:1], t[:1], None)
    assert min(float((g[i] - g[j]).norm()) for i in range(8) for j in range(i)) > 1e-4
    assert not any(torch.allclose(unconditional[0], row) for row in g)
    plain = TimeMLP(2, 1000, 16)
    assert "num_classes" not in plain.kwargs and plain.classes is None
    assert TimeMLP(**m.student.net.kwargs).classes.num_embeddings == 9


@pytest.mark.parametrize("w,sharp_min,iterations", [(1.0, 0.9, 400), (3.0, 0.8, 600)])
def test_conditional_one_step_lands_on_the_requested_component(w, sharp_min, iterations):
    """Class-conditional gmm2d (class c = component c), BOOT at guidance w: 2000 one-step samples
    with labels i mod 8 land nearest their own component (measured 1.00 at w = 1 after 400 steps
    and w = 3 after 600; before the student read the class: 0.126, chance) and within 3 std of
    it (measured 1.00 and 0.90; at 1000 steps 1.00 and 0.94: guidance pushes past the mode; w = 3
    at 400 steps: 0.77)."""
    from bench.teachers.analytic import gmm2d_params, mixture_teacher

    torch.manual_seed(0)
    teacher = mixture_teacher(*gmm2d_params(), conditional=True).replace(guidance_scale=w)
    m = _boot(teacher, iterations=iterations, lr=1e-3, batch_size=64, checkpoint_every=0, eval_every=0)
    m.distill(_ctx())
    own, sharp = on_requested_component(m.sampler(1))
    assert own > 0.95 and sharp > sharp_min, (own, sharp)
