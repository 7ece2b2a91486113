"""DDIM few-step baseline: the teacher itself, K deterministic DDIM steps, no training."""
from __future__ import annotations

import dataclasses

from bench.config import option
from bench.method import Method
from bench.registry import METHODS
from bench.sampling import Sampler, ddim_sample
from bench.schedule import SPACINGS


@dataclasses.dataclass(frozen=True)
class DDIMConfig:
    spacing: str = option("trailing", f"timestep spacing: one of {', '.join(SPACINGS)} "
                                      "(trailing starts at the noisiest step; best for few steps)")

    def __post_init__(self):
        if self.spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}, got {self.spacing!r}")


@METHODS.register("ddim", "teacher sampled with K deterministic DDIM steps (no training)")
class DDIM(Method):
    Config = DDIMConfig

    def sampler(self, nfe: int) -> Sampler:
        self.check_nfe(nfe)
        timesteps = self.teacher.schedule.timesteps(nfe, self.config.spacing)
        return lambda noise, cond=None: ddim_sample(self.teacher, noise, timesteps, cond)
