"""A training step's batch as streams: micro-batches and data-parallel workers, one rule for both.

The global batch of ``batch_size`` rows is split into S = workers x micro_batches streams of
``batch_size / S`` rows. Stream k draws its rows from its own generator, seeded by (seed, k)
(stream 0 by the seed itself, so a single stream is the loop as it always was), and holds its
position in the batch whatever process runs it: rank r of N runs streams r*M .. r*M + M - 1.
So two workers compute what one process computes with two micro-batches, up to the order of
floating-point sums, and a run resumes exactly on any layout with the same S.

Each stream's mean loss enters the gradient as 1/S of the global mean: gradients are summed
over a process's streams and then over the workers (one flattened all-reduce per update, which
is what DistributedDataParallel computes, without its overlap with the backward pass: methods
call their networks directly and through EMA or target copies, which a DDP wrapper would have
to replace everywhere). The step's loss and teacher-forward count are reduced the same way, so
every rank takes the same decision on a non-finite loss and logs the same numbers.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np
import torch

from bench.errors import BenchError


def stream_seed(seed: int, k: int) -> int:
    """Seed of stream k: the run's own seed for stream 0, a SeedSequence child for the others."""
    if k == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(k)]).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclasses.dataclass
class Streams:
    """This process's share of every batch: its streams' generators, rows and reductions."""

    seed: int
    batch_size: int
    micro_batches: int = 1
    rank: int = 0
    world: int = 1

    def __post_init__(self):
        total = self.micro_batches * self.world
        if self.batch_size % total:
            raise BenchError(f"batch_size {self.batch_size} does not split into {self.world} worker(s) x "
                             f"{self.micro_batches} micro-batch(es); choose a batch_size divisible by {total}")
        self.count = total
        self.rows = self.batch_size // total
        first = self.rank * self.micro_batches
        self.gens = {k: torch.Generator().manual_seed(stream_seed(self.seed, k))
                     for k in range(first, first + self.micro_batches)}

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def items(self) -> Iterable[tuple[int, torch.Generator]]:
        return self.gens.items()

    # -- reductions over workers -------------------------------------------------------
    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Sum numbers over the workers (float64: counts of teacher forwards stay exact)."""
        if not self.distributed:
            return [float(v) for v in values]
        t = torch.tensor(list(values), dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over the workers in one flattened all-reduce."""
        if not self.distributed:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
            offset += n

    # -- RNG state, for checkpoints ------------------------------------------------------
    def state(self) -> dict:
        """Every stream's generator state, gathered from all workers (rank 0 saves it)."""
        mine = {k: g.get_state() for k, g in self.gens.items()}
        if not self.distributed:
            return {"count": self.count, "gens": mine}
        gathered: list = [None] * self.world
        torch.distributed.all_gather_object(gathered, mine)
        return {"count": self.count, "gens": {k: v for part in gathered for k, v in part.items()}}

    @staticmethod
    def saved(checkpoint: dict) -> dict:
        """The streams' state in a checkpoint (before streams: one generator, "gen")."""
        return checkpoint.get("streams") or {"count": 1, "gens": {0: checkpoint["gen"]}}

    def load(self, state: dict, where: str) -> None:
        """Restore this process's streams; a checkpoint of another stream count cannot continue
        the same random sequence, which is said in one line."""
        if state["count"] != self.count:
            raise BenchError(f"{where} was written with {state['count']} batch stream(s) (workers x "
                             f"micro_batches) and this run has {self.count}: it continues exactly only "
                             f"with the same count; resume with workers x micro_batches = {state['count']}")
        for k, g in self.gens.items():
            g.set_state(state["gens"][k].cpu())
