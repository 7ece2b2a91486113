"""Checks of an evaluation: those that need no samples (run before a run distils anything) and
the finiteness of what it computes. Kept apart from the evaluator so that both it and
``bench.run`` use them without a circle."""
from __future__ import annotations

from typing import Sequence

import torch

from bench.errors import BenchError

PR_NEIGHBOURS = 3  # k of the k-NN precision/recall


class NonFinite(BenchError):
    """Samples, features or a metric hold NaN or inf: there is no result to log."""


def check_finite(x: torch.Tensor, what: str) -> None:
    """NonFinite naming ``what`` and how many of its rows are not finite."""
    ok = torch.isfinite(x.reshape(len(x), -1)).all(1) if x.dim() else torch.isfinite(x)
    if not bool(ok.all()):
        bad = int((~ok).sum()) if x.dim() else 1
        raise NonFinite(f"{bad} of {len(x) if x.dim() else 1} {what} are not finite (NaN or inf)")


def check_evaluation(n: int, dim: int, metrics: Sequence[str], reference_has_features: bool) -> None:
    """What can be checked of an evaluation before any sample is drawn (bench run does it
    before distilling): FID's n against the feature dimension, precision/recall's n against
    its k, and metrics a statistics-only reference cannot give."""
    if "fid" in metrics:
        check_fid_n(n, dim)
    if "pr" in metrics and n <= PR_NEIGHBOURS:
        raise BenchError(f"precision/recall need more than k={PR_NEIGHBOURS} samples, got n={n}; raise "
                         f"--num-samples or drop pr from --metrics")
    needs = [m for m in metrics if m in ("kid", "pr")]
    if needs and not reference_has_features:
        raise BenchError(f"a stats: reference holds FID statistics only, not the features {' and '.join(needs)} "
                         f"need; use --metrics fid, or --reference data, teacher or folder:PATH")


def check_fid_n(n: int, dim: int) -> None:
    if n < 2 or (dim > 0 and n < dim):
        raise BenchError(f"FID needs at least as many samples as feature dimensions ({max(dim, 2)}), "
                         f"got n={n}: the covariance is rank-deficient and FID meaningless; raise "
                         f"--num-samples, or use --metrics kid, which is unbiased at small n")
