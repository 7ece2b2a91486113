"""NFE counted, not assumed: the network evaluations a sampler actually makes.

A step count is only a fair axis if it is what the sampler spends: Heun spends two network
calls per step, PNDM's warm start one more, a guided sampler two rows per call. So every
evaluation runs its sampler under :class:`NetworkCalls` and logs the count beside the FID;
a sampler whose count differs from the NFE it was asked for is refused (``bench.run``).
"""
from __future__ import annotations

from typing import Callable

import torch


_ACTIVE: list["NetworkCalls"] = []  # the counters open now, innermost last
_INSTALLED: list = []  # the global hooks, installed once


def _pre(module, args) -> None:
    if _ACTIVE and not torch.compiler.is_compiling():  # compiled code sees no hook state
        _ACTIVE[-1].enter(module, args)


def _post(module, args, out) -> None:
    if _ACTIVE and not torch.compiler.is_compiling():
        _ACTIVE[-1].depth -= 1


class NetworkCalls:
    """Counts top-level network calls (a module called while no other module runs) and the
    rows that went through frozen ones (no parameter that requires grad): the teacher's
    forwards. Global module hooks, so it sees teachers and students alike without knowing
    which method made them. The hooks are installed once and stay: new hooks per count would
    make torch.compile'd samplers recompile on every batch (it guards on the hook set)."""

    def __enter__(self) -> "NetworkCalls":
        if not _INSTALLED:
            _INSTALLED.extend([torch.nn.modules.module.register_module_forward_pre_hook(_pre),
                               torch.nn.modules.module.register_module_forward_hook(_post)])
        self.depth, self.calls, self.frozen_rows = 0, 0, 0
        _ACTIVE.append(self)
        return self

    def enter(self, module, args) -> None:
        if self.depth == 0:
            self.calls += 1
            if args and torch.is_tensor(args[0]) and not any(p.requires_grad for p in module.parameters()):
                self.frozen_rows += args[0].shape[0]
        self.depth += 1

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)


class CountedSampler:
    """A sampler that records the network calls of each of its invocations (one per batch)."""

    def __init__(self, sampler: Callable[..., torch.Tensor]):
        self.sampler = sampler
        self.per_call: list[int] = []

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        with NetworkCalls() as calls:
            out = self.sampler(*args, **kwargs)
        self.per_call.append(calls.calls)
        return out

    def counted(self) -> int:
        """The network calls every batch made; ValueError if batches differ (a sampler whose
        cost depends on the batch would make NFE meaningless)."""
        seen = sorted(set(self.per_call))
        if len(seen) != 1:
            raise ValueError(f"network calls per batch differ between batches: {seen}")
        return seen[0]
