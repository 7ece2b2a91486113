"""DDIM few-step baseline: the teacher itself, K deterministic DDIM steps, no training."""
from __future__ import annotations

import dataclasses

from bench.config import check_choices, option
from bench.method import Method
from bench.registry import METHODS
from bench.sampling import Sampler, ddim_sample
from bench.schedule import SPACINGS


@dataclasses.dataclass(frozen=True)
class DDIMConfig:
    spacing: str = option("trailing", "timestep spacing (trailing starts at the noisiest step; best for "
                                      "few steps)", choices=SPACINGS)

    def __post_init__(self):
        check_choices(self)


@METHODS.register("ddim", "teacher sampled with K deterministic DDIM steps (no training); guided at "
                           "--guidance-scale for class-conditional teachers")
class DDIM(Method):
    Config = DDIMConfig

    def sampler(self, nfe: int) -> Sampler:
        self.check_nfe(nfe)
        timesteps = self.teacher.schedule.timesteps(nfe, self.config.spacing)
        return lambda noise, cond=None: ddim_sample(self.teacher, noise, timesteps, cond)
