"""The training-free solvers: against diffusers' own pipeline loop, against our DDIM, against the
exact ODE map of the Gaussian teacher (pinned), and their NFE counted."""
import functools
import inspect

import diffusers
import pytest
import torch
from diffusers import DDPMScheduler

from bench import config as cfgs
from bench.errors import BenchError
from bench.nfe import CountedSampler, NetworkCalls
from bench.registry import METHODS, TEACHERS
from bench.sampling import ddim_sample
from bench.teachers.analytic import exact_ode_map
from bench.teachers.base import Provenance
from bench.teachers.diffusers_teacher import unet_teacher
from conftest import tiny_unet
from methods.solver import IPNDM_COEFFICIENTS, SCHEDULERS, Solver, SolverConfig

pytestmark = pytest.mark.fast
CPU = torch.device("cpu")
DIFFUSERS = [name for name, spec in SCHEDULERS.items() if spec.cls]


def solver(teacher, **settings) -> Solver:
    return Solver(teacher, SolverConfig(**settings), CPU)


@functools.lru_cache(maxsize=None)  # one network per kind: building it costs more than sampling
def _unet_teacher(prediction_type: str, clip: bool):
    unet = tiny_unet().eval()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type=prediction_type,
                              clip_sample=clip)
    return unet, unet_teacher(unet, scheduler, Provenance("test"))


def pipeline_loop(unet, scheduler, noise, steps, **step_kwargs):
    """diffusers' denoising loop (StableDiffusionPipeline's, unguided) on the raw network."""
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("name", DIFFUSERS)
def test_each_scheduler_is_diffusers_pipeline_loop(name, prediction_type):
    """Same samples as diffusers' loop with the same scheduler (built by hand here from the
    teacher's config) on the same network and noise: the adapter (parameterisation, time,
    input scaling, state) adds nothing. Unclipped, since diffusers' solvers do not clip."""
    spec = SCHEDULERS[name]
    if prediction_type not in spec.predictions:
        pytest.skip(f"{name} takes no {prediction_type} model (ours feeds it epsilon instead)")
    unet, teacher = _unet_teacher(prediction_type, clip=False)
    ours = solver(teacher, scheduler=name)
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for steps in (1, 4):  # 4: the multistep solvers use their history and lower their order at the end
        knobs = {k: getattr(ours.config, k) for k in spec.knobs if k != "solver_order"}
        if "solver_order" in spec.knobs and not spec.order_in_step:
            knobs["solver_order"] = ours.config.order
        ref = getattr(diffusers, spec.cls).from_config(teacher.scheduler_config, **spec.fixed, **knobs)
        with torch.no_grad():
            want = pipeline_loop(unet, ref, noise, steps, **({"order": 4} if name == "lms" else {}))
            got = ours.solve(noise, steps)
        assert torch.allclose(got, want, atol=1e-5, rtol=0), (name, steps, (got - want).abs().max())


def test_a_teacher_type_the_scheduler_lacks_goes_in_as_epsilon():
    """PNDM takes no x0 model: a sample-predicting teacher is fed as eps, and still lands where
    diffusers' loop lands on the same teacher read as eps."""
    unet, teacher = _unet_teacher("sample", clip=False)
    ours = solver(teacher, scheduler="pndm")
    assert ours.prediction == "epsilon"

    class AsEps(torch.nn.Module):
        def forward(self, x, t):
            return type("Out", (), {"sample": teacher.eps(x, t)})

    ref = diffusers.PNDMScheduler.from_config({**teacher.scheduler_config, "prediction_type": "epsilon"},
                                              **SCHEDULERS["pndm"].fixed, timestep_spacing="trailing")
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(ours.solve(noise, 4), pipeline_loop(AsEps(), ref, noise, 4), atol=1e-5)


@pytest.mark.parametrize("teacher_name", ["digits", "digits_eps", "gaussian"])
def test_ddim_scheduler_equals_our_ddim(teacher_name):
    """scheduler=ddim is the `ddim` method's sampler, clipping included (the teacher's clip in
    both), for v-, eps- and x0-teachers."""
    teacher = TEACHERS.get(teacher_name)(path=None, device="cpu")
    noise = torch.randn((16,) + teacher.sample_shape, generator=torch.Generator().manual_seed(2))
    ours = solver(teacher, scheduler="ddim")
    for k in (1, 2, 5, 10):
        want = ddim_sample(teacher, noise, teacher.schedule.timesteps(k, "trailing"))
        # diffusers keeps alpha_bar in float32, we in float64: at t = 999 of the linear schedule
        # x0 = (x - sigma eps) / alpha multiplies that rounding by 1 / alpha = 157 (measured 5e-5)
        assert torch.allclose(ours.sampler(k)(noise), want, atol=1e-4 if k == 1 else 1e-5), (teacher_name, k)


def test_ipndm_order_one_is_ddim_and_its_weights_are_adams_bashforth():
    teacher = TEACHERS.get("digits_eps")(path=None, device="cpu")
    noise = torch.randn((8,) + teacher.sample_shape, generator=torch.Generator().manual_seed(3))
    want = ddim_sample(teacher, noise, teacher.schedule.timesteps(6, "trailing"))
    assert torch.allclose(solver(teacher, scheduler="ipndm", solver_order=1).sampler(6)(noise), want, atol=1e-5)
    # Adams-Bashforth of order p integrates polynomials of degree < p exactly on a uniform grid:
    # sum_j c_j q(-j) = integral_0^1 q for q = 1, u, u^2, ...
    for c in IPNDM_COEFFICIENTS:
        for degree in range(len(c)):
            exact = 1 / (degree + 1)
            assert sum(w * (-j) ** degree for j, w in enumerate(c)) == pytest.approx(exact), (c, degree)


# RMSE to the closed-form ODE map on the 16-D Gaussian teacher from x_999 = eps (512 draws),
# measured with diffusers 0.42.1; trailing spacing. The grid's last jump (to alpha = 1 from
# t = T/K - 1) dominates at few steps, where the solvers that lower their order on the final
# steps (diffusers' lower_order_final) are close to DDIM.
GAUSSIAN_RMSE = {  # scheduler settings -> {NFE: RMSE}
    "ddim": {4: 0.189, 8: 0.124, 16: 0.0698},
    "euler": {4: 0.189, 8: 0.124, 16: 0.0726},
    "dpmsolver++": {4: 0.188, 8: 0.118, 16: 0.0578},
    "dpmsolver++ 3": {4: 0.188, 8: 0.117, 16: 0.0544},
    "dpmsolver++_singlestep": {4: 0.189, 8: 0.124, 16: 0.0690},
    "unipc": {4: 0.188, 8: 0.117, 16: 0.0568},
    "deis": {4: 0.179, 8: 0.111, 16: 0.0173},
    "lms": {4: 0.176, 8: 0.0810, 16: 0.0256},
    "pndm": {4: 0.148, 8: 0.0672, 16: 0.0212},
    "ipndm": {4: 0.133, 8: 0.0647, 16: 0.0243},
    "heun": {3: 0.242, 7: 0.178, 15: 0.106},  # Heun spends 2 calls a step: odd NFEs only
}
HIGHER_ORDER = ("dpmsolver++", "dpmsolver++ 3", "unipc", "deis", "lms", "pndm", "ipndm")


def _gaussian_errors() -> dict:
    teacher = TEACHERS.get("gaussian")(path=None, device="cpu")
    mu, std = teacher.net.mu[0], teacher.net.s2[0].sqrt()
    noise = torch.randn((512,) + teacher.sample_shape, generator=torch.Generator().manual_seed(0))
    exact = exact_ode_map(noise, mu, std, teacher.schedule, teacher.T - 1)
    errors = {}
    for key, table in GAUSSIAN_RMSE.items():
        name, *order = key.split()
        m = solver(teacher, scheduler=name, solver_order=int(order[0]) if order else 0)
        errors[key] = {k: float(((m.sampler(k)(noise).double() - exact) ** 2).mean().sqrt()) for k in table}
    return errors


def test_gaussian_errors_are_pinned_and_higher_order_beats_ddim():
    errors = _gaussian_errors()
    for key, table in GAUSSIAN_RMSE.items():
        for k, pinned in table.items():
            assert errors[key][k] == pytest.approx(pinned, rel=0.02), (key, k, errors[key][k])
    for key in HIGHER_ORDER:
        for k in (4, 8, 16):
            assert errors[key][k] < errors["ddim"][k], (key, k)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_counted_calls_are_the_nfe_and_others_are_refused(name):
    teacher = TEACHERS.get("gmm2d")(path=None, device="cpu")
    m = solver(teacher, scheduler=name)
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(4))
    for k in m.default_nfe() + (3, 5, 10):
        try:
            sampler = CountedSampler(m.sampler(k))
        except BenchError as exc:  # the few a solver cannot spend: refused, naming the nearest
            near = [int(w) for w in str(exc).split("are ")[1].split(":")[0].split(" or ")]
            assert all(c != k for c in near) and any(abs(c - k) <= 2 for c in near), str(exc)
            continue
        sampler(noise)
        sampler(noise[:2])
        assert sampler.counted() == k, (name, k, sampler.per_call)


def test_heun_refuses_an_even_nfe_in_one_line():
    m = solver(TEACHERS.get("gmm2d")(path=None, device="cpu"), scheduler="heun")
    with pytest.raises(BenchError, match=r"^heun cannot spend exactly 4 .* nearest it can are 3 or 5: "):
        m.sampler(4)
    assert m.default_nfe() == (1, 3, 7, 15, 31, 63)


def test_knobs_are_the_schedulers_own_and_others_refused():
    for name, spec in SCHEDULERS.items():
        if not spec.cls:
            continue
        params = inspect.signature(getattr(diffusers, spec.cls).__init__).parameters
        for key in [*spec.knobs, *spec.fixed]:
            assert key in params or (spec.order_in_step and key == "solver_order"), (name, key)
    with pytest.raises(ValueError, match="ddim takes no use_karras_sigmas"):
        SolverConfig(scheduler="ddim", use_karras_sigmas=True)
    with pytest.raises(ValueError, match="solver_order 4 is outside 1..3"):
        SolverConfig(scheduler="dpmsolver++", solver_order=4)
    cfg = cfgs.replace(SolverConfig(), {"scheduler": "unipc", "solver_order": "3"})
    assert cfgs.from_params(SolverConfig, cfgs.to_params(cfg, "method."), "method.") == cfg


def test_clip_none_is_the_raw_network():
    """clip=none: the teacher's clipping is off, so x0 may leave the data range."""
    _, teacher = _unet_teacher("epsilon", clip=True)
    noise = 3 * torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    clipped = solver(teacher, scheduler="dpmsolver++").sampler(2)(noise)
    raw = solver(teacher, scheduler="dpmsolver++", clip="none").sampler(2)(noise)
    assert clipped.abs().max() <= 1 + 1e-5 < raw.abs().max()


def test_labels_name_the_solver():
    teacher = TEACHERS.get("gmm2d")(path=None, device="cpu")
    assert solver(teacher).variant() == "dpmsolver++ 2M"
    assert solver(teacher, scheduler="dpmsolver++", solver_order=3).variant() == "dpmsolver++ 3M"
    assert solver(teacher, scheduler="dpmsolver++_singlestep").variant() == "dpmsolver++ 2S"
    assert solver(teacher, scheduler="unipc").variant() == "unipc"
    assert solver(teacher, scheduler="unipc", solver_order=3).variant() == "unipc 3"


def test_a_miscounting_sampler_fails_the_run_step():
    """run() refuses a sampler whose counted calls differ from its NFE, or vary by batch."""
    from bench.run import _counted

    net = torch.nn.Linear(2, 2)
    twice = CountedSampler(lambda x: net(net(x)))
    twice(torch.zeros(1, 2))
    with pytest.raises(BenchError, match="sampler for NFE 1 made 2 network calls"):
        _counted(twice, "fake", 1)
    varying = CountedSampler(lambda x: net(x) if len(x) > 1 else net(net(x)))
    varying(torch.zeros(2, 2)), varying(torch.zeros(1, 2))
    with pytest.raises(BenchError, match=r"differ between batches: \[1, 2\]"):
        _counted(varying, "fake", 1)
    with NetworkCalls() as calls:  # top-level calls only: a network's layers are not evaluations
        net(net(torch.zeros(1, 2)))
        torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())(torch.zeros(1, 2))
    assert calls.calls == 3
