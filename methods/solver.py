"""Training-free fast ODE solvers: the teacher sampled with a diffusers scheduler, NFE counted.

The fair baseline for a distilled student is the best sampler that needs no training at the
same number of network evaluations (NFE). diffusers ships the field's solvers as schedulers;
this method builds one from the teacher's own noise schedule (``from_config``, as diffusers
swaps schedulers) and runs diffusers' pipeline loop (StableDiffusionPipeline's denoising loop)
over the one denoiser contract:

    x = noise * init_noise_sigma
    for t in timesteps:  x_in = scale_model_input(x, t);  (x0, eps) = teacher.predict(x_in, t)
                         x = step(output(x0, eps), t, x)

``output`` re-expresses the teacher's (x0, eps) pair in the parameterisation the scheduler is
configured for: the teacher's native one where the scheduler takes it (the output is then the
network's own, bit for bit up to rounding, when nothing is clipped), else epsilon. Clipping of
x0 is the teacher's (``clip``), applied alike in every solver, as in our DDIM.

Solvers: DDIM (Song et al. 2021), Euler and Heun in the sigma variable (Karras et al. 2022,
Alg. 1), DPM-Solver++ (Lu et al. 2022b; multistep 2M/3M and singlestep), UniPC (Zhao et al.
2023), DEIS (Zhang & Chen 2023), LMS (Karras' k-diffusion), PLMS/PNDM (Liu et al. 2022) and
iPNDM. diffusers' ``IPNDMScheduler`` assumes a continuous cosine-time model with t in [0, 1],
so it cannot drive a discrete DDPM teacher; iPNDM is written out here: the Adams-Bashforth
method with iPNDM's fixed coefficients (Zhang & Chen 2023, app. on iPNDM; zju-pi/diff-sampler)
on the DDIM ODE dy/dsigma_bar = eps(x), y = x / alpha_t, sigma_bar = sigma_t / alpha_t, whose
order-1 (Euler) step is exactly DDIM. Stochastic samplers (DPM-Solver-SDE, ancestral Euler) are
left out: their noise is drawn per batch, so a sample would depend on its batch-mates and the
evaluator's per-sample seeds would no longer make results batch-size independent.
"""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Optional

import torch

from bench.config import check_choices, option
from bench.errors import BenchError
from bench.method import DEFAULT_NFE, Method
from bench.registry import METHODS
from bench.sampling import Sampler
from bench.schedule import SPACINGS


@dataclasses.dataclass(frozen=True)
class Spec:
    cls: str  # diffusers class name ("" for the solvers written out here)
    fixed: dict  # settings that make the scheduler deterministic and our clipping the only one
    knobs: tuple[str, ...]  # the config fields below this scheduler takes
    predictions: tuple[str, ...] = ("epsilon", "sample", "v_prediction")
    default_order: int = 0  # 0: no order to choose
    max_order: int = 0
    label: str = ""  # how reports name it, with {order}; "" : the scheduler's name
    order_in_step: bool = False  # the order goes to step() (LMS), not to the constructor


_MULTI = ("solver_order", "timestep_spacing", "use_karras_sigmas", "lower_order_final", "thresholding")
SCHEDULERS: dict[str, Spec] = {
    "ddim": Spec("DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": False, "steps_offset": 0},
                 ("timestep_spacing", "thresholding")),
    "euler": Spec("EulerDiscreteScheduler", {"steps_offset": 0},
                  ("timestep_spacing", "use_karras_sigmas", "final_sigmas_type")),
    "heun": Spec("HeunDiscreteScheduler", {"clip_sample": False, "steps_offset": 0},
                 ("timestep_spacing", "use_karras_sigmas")),
    "dpmsolver++": Spec("DPMSolverMultistepScheduler",
                        {"algorithm_type": "dpmsolver++", "euler_at_final": False, "steps_offset": 0},
                        _MULTI + ("final_sigmas_type",), default_order=2, max_order=3, label="dpmsolver++ {order}M"),
    "dpmsolver++_singlestep": Spec("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++"},
                                   ("solver_order", "use_karras_sigmas", "lower_order_final", "thresholding",
                                    "final_sigmas_type"), default_order=2, max_order=3, label="dpmsolver++ {order}S"),
    "unipc": Spec("UniPCMultistepScheduler", {"predict_x0": True, "steps_offset": 0},
                  _MULTI + ("final_sigmas_type",), default_order=2, max_order=3),
    "deis": Spec("DEISMultistepScheduler", {"algorithm_type": "deis", "steps_offset": 0}, _MULTI,
                 default_order=2, max_order=3),
    "lms": Spec("LMSDiscreteScheduler", {"steps_offset": 0},
                ("solver_order", "timestep_spacing", "use_karras_sigmas"), default_order=4, max_order=4,
                order_in_step=True),
    "pndm": Spec("PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": True, "steps_offset": 0},
                 ("timestep_spacing",), predictions=("epsilon", "v_prediction")),
    "ipndm": Spec("", {}, ("solver_order", "timestep_spacing"), predictions=("epsilon",),
                  default_order=4, max_order=4),
}


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    scheduler: str = option("dpmsolver++", "the diffusers solver (ipndm is ours: diffusers' IPNDMScheduler "
                                           "needs a continuous-time model)", choices=tuple(SCHEDULERS))
    solver_order: int = option(0, "order of multistep solvers; 0: the scheduler's default (DPM-Solver++, "
                                  "UniPC, DEIS: 2; LMS, iPNDM: 4); dpmsolver++ 3 is DPM-Solver++(3M)")
    timestep_spacing: str = option("trailing", "timestep spacing (trailing starts at the noisiest step: "
                                               "best for few steps)", choices=SPACINGS)
    use_karras_sigmas: bool = option(False, "Karras et al.'s sigma spacing (rho = 7) instead of the grid's")
    lower_order_final: bool = option(True, "lower the order on the last steps (stabilises few-step "
                                           "sampling, diffusers' default)")
    final_sigmas_type: str = option("zero", "where the last step lands: zero (alpha = 1, as DDIM) or "
                                            "sigma_min (the grid's last noise level)", choices=("zero", "sigma_min"))
    thresholding: bool = option(False, "dynamic thresholding of x0 (Saharia et al. 2022) with the teacher "
                                       "config's ratio; for x0-predicting solvers")
    clip: str = option("teacher", "x0 clipping: teacher (its own data-range clip, in every solver alike) "
                                  "or none (the raw network, as diffusers' solvers without clip_sample)",
                       choices=("teacher", "none"))

    def __post_init__(self):
        check_choices(self)
        spec = SCHEDULERS[self.scheduler]
        for f in dataclasses.fields(self):
            if f.name in ("scheduler", "clip") or f.name in spec.knobs:
                continue
            if getattr(self, f.name) != f.default:
                raise ValueError(f"{self.scheduler} takes no {f.name}; it takes "
                                 f"{', '.join(spec.knobs) or 'no settings'}")
        if self.solver_order and not 1 <= self.solver_order <= spec.max_order:
            raise ValueError(f"solver_order {self.solver_order} is outside 1..{spec.max_order} for {self.scheduler}")

    @property
    def order(self) -> int:
        return self.solver_order or SCHEDULERS[self.scheduler].default_order


@METHODS.register("solver", "teacher sampled with a training-free diffusers ODE solver (DPM-Solver++, UniPC, "
                            "DEIS, Heun, iPNDM, ...); NFE counted; guided at --guidance-scale")
class Solver(Method):
    Config = SolverConfig

    def __init__(self, teacher, config: SolverConfig, device):
        super().__init__(teacher, config, device)
        self.spec = SCHEDULERS[config.scheduler]
        self.denoiser = teacher if config.clip == "teacher" else teacher.replace(clip_x0=False)
        native = teacher.prediction_type
        self.prediction = native if native in self.spec.predictions else "epsilon"
        self._steps: dict[int, int] = {}  # NFE -> the num_inference_steps that spends it
        self._calls: dict[int, int] = {}  # num_inference_steps -> network calls
        self._counter = None  # one scheduler, reused to count calls (set_timesteps resets it)

    def variant(self) -> str:
        """``dpmsolver++ 3M``, ``unipc 3`` (an order chosen), ``unipc`` (its default)."""
        if self.spec.label:
            return self.spec.label.format(order=self.config.order)
        return f"{self.config.scheduler} {self.config.order}" if self.config.solver_order else self.config.scheduler

    def scheduler(self):
        """A fresh scheduler (they keep per-sampling state) from the teacher's noise schedule."""
        if not self.spec.cls:
            return IPNDM(self.teacher.schedule, self.config.order, self.config.timestep_spacing)
        import diffusers

        knobs = {k: getattr(self.config, k) for k in self.spec.knobs if k != "solver_order"}
        if "solver_order" in self.spec.knobs and not self.spec.order_in_step:
            knobs["solver_order"] = self.config.order
        cls = getattr(diffusers, self.spec.cls)
        return cls.from_config(teacher_scheduler_config(self.teacher), **self.spec.fixed, **knobs,
                               prediction_type=self.prediction)

    def calls(self, steps: int) -> int:
        """Network calls of a sampling run with ``steps`` inference steps (Heun: 2 per step but the
        last; PNDM: one more for its warm start): what the scheduler's timesteps hold."""
        if steps not in self._calls:
            self._counter = self._counter or self.scheduler()
            self._counter.set_timesteps(steps)
            self._calls[steps] = len(self._counter.timesteps)
        return self._calls[steps]

    def _fewest_steps(self, nfe: int) -> int:
        """The fewest inference steps that spend at least ``nfe`` calls (calls never fall as steps
        grow, and are never fewer than steps): a bisection, so any NFE up to T is checked fast."""
        lo, hi = 1, nfe
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if self.calls(mid) < nfe else (lo, mid)
        return lo

    def check_nfe(self, nfe: int) -> None:
        """Refuses, in one line naming the nearest it can spend, an NFE this solver cannot spend
        exactly."""
        super().check_nfe(nfe)
        if nfe in self._steps:
            return
        steps = self._fewest_steps(nfe)
        if self.calls(steps) != nfe:
            near = " or ".join(str(c) for c in (self.calls(steps - 1) if steps > 1 else None, self.calls(steps))
                               if c is not None)
            raise BenchError(f"{self.variant()} cannot spend exactly {nfe} network evaluations; the "
                             f"nearest it can are {near}: choose --nfe among those")
        self._steps[nfe] = steps

    def default_nfe(self) -> tuple[int, ...]:
        """For each of the usual step counts, the largest NFE this solver can spend within it."""
        out = []
        for k in (k for k in DEFAULT_NFE if k <= self.max_nfe()):
            steps = self._fewest_steps(k)
            spent = self.calls(steps) if self.calls(steps) == k else self.calls(steps - 1) if steps > 1 else None
            if spent and spent not in out:
                out.append(spent)
        return tuple(out)

    def sampler(self, nfe: int) -> Sampler:
        self.check_nfe(nfe)
        steps = self._steps[nfe]
        return lambda noise, cond=None: self.solve(noise, steps, cond)

    @torch.no_grad()
    def solve(self, noise: torch.Tensor, steps: int, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """diffusers' pipeline loop from x_{t_max} = noise over ``steps`` inference steps."""
        sched = self.scheduler()
        sched.set_timesteps(steps, device=noise.device)
        extra = {"order": self.config.order} if self.spec.order_in_step else {}
        x = noise * sched.init_noise_sigma
        for t in sched.timesteps:
            x_in = sched.scale_model_input(x, t)
            out = self.model_output(x_in, t, cond)
            x = sched.step(out, t, x, **extra).prev_sample
        return x

    def model_output(self, x_t: torch.Tensor, t, cond=None) -> torch.Tensor:
        """The denoiser's (x0, eps) at (x_t, t) in the scheduler's parameterisation; v = alpha eps -
        sigma x0 (Salimans & Ho 2022, sec. 4) with the alpha, sigma the teacher converted with."""
        x0, eps = self.denoiser.predict(x_t, t, cond)
        if self.prediction == "epsilon":
            return eps
        if self.prediction == "sample":
            return x0
        a, s = self.denoiser.coefficients(torch.as_tensor(t, dtype=torch.float32), x0)
        return a * eps - s * x0


def teacher_scheduler_config(teacher) -> dict:
    """The teacher's diffusers scheduler config where it has one (hub and shipped teachers),
    else its noise schedule as ``trained_betas`` (analytic teachers)."""
    config = getattr(teacher, "scheduler_config", None)
    if config:
        return dict(config)
    ab = teacher.schedule.alphas_cumprod
    betas = 1 - ab / torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    return {"num_train_timesteps": teacher.T, "trained_betas": betas.tolist()}


IPNDM_COEFFICIENTS = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12),
                      (55 / 24, -59 / 24, 37 / 24, -9 / 24))
"""Adams-Bashforth weights of eps_i, eps_{i-1}, ... by the history available (iPNDM)."""


class IPNDM:
    """iPNDM with a diffusers scheduler's interface, on the teacher's DDIM timesteps.

    y_{i+1} = y_i + (sigma_bar_{i+1} - sigma_bar_i) sum_j c_j eps_{i-j},  x = alpha y,
    with c from IPNDM_COEFFICIENTS (order rising with the history, up to ``order``)."""

    init_noise_sigma = 1.0

    def __init__(self, schedule, order: int, spacing: str):
        self.schedule, self.order, self.spacing = schedule, order, spacing
        self.history: list[torch.Tensor] = []

    def set_timesteps(self, steps: int, device=None) -> None:
        self.timesteps = torch.tensor(self.schedule.timesteps(steps, self.spacing), device=device)
        self.next = dict(zip(self.timesteps.tolist(), self.timesteps.tolist()[1:] + [-1]))
        self.history = []

    def scale_model_input(self, x: torch.Tensor, t) -> torch.Tensor:
        return x

    def step(self, eps: torch.Tensor, t, x: torch.Tensor) -> SimpleNamespace:
        t = int(t)
        s = self.next[t]
        self.history = [eps] + self.history[: self.order - 1]
        c = IPNDM_COEFFICIENTS[len(self.history) - 1]
        slope = sum(w * e for w, e in zip(c, self.history))
        a_t, a_s = float(self.schedule.alpha(t)), float(self.schedule.alpha(s))
        bar_t, bar_s = float(self.schedule.sigma(t)) / a_t, float(self.schedule.sigma(s)) / a_s
        return SimpleNamespace(prev_sample=a_s * (x / a_t + (bar_s - bar_t) * slope))
