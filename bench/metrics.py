"""The scores of the shared evaluator (bench/evaluator.py): streaming feature statistics, and
FID, KID, precision/recall (torch-fidelity's formulas), per-class FID and PSNR.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from bench.eval_checks import PR_NEIGHBOURS, check_fid_n

KEEP_FEATURES = 10_000  # KID subsets of 1000 and k-NN precision/recall need no more


class FeatureStats:
    """Streaming mean and covariance (float64 sums) plus the first ``keep`` features."""

    def __init__(self, keep: int = KEEP_FEATURES):
        self.n, self.keep = 0, keep
        self.s1: Optional[torch.Tensor] = None
        self.s2: Optional[torch.Tensor] = None
        self._kept: list[torch.Tensor] = []

    def update(self, f: torch.Tensor) -> None:
        f = f.double().flatten(1)
        if self.s1 is None:
            self.s1, self.s2 = torch.zeros(f.shape[1], dtype=torch.float64), torch.zeros(
                f.shape[1], f.shape[1], dtype=torch.float64)
        self.s1 += f.sum(0)
        self.s2 += f.T @ f
        room = self.keep - sum(len(k) for k in self._kept)
        if room > 0:
            self._kept.append(f[:room].float())
        self.n += len(f)

    @classmethod
    def of(cls, features: torch.Tensor, keep: int = KEEP_FEATURES) -> "FeatureStats":
        stats = cls(keep)
        stats.update(features)
        return stats

    @property
    def mu(self) -> np.ndarray:
        return (self.s1 / self.n).numpy()

    @property
    def sigma(self) -> np.ndarray:
        """Unbiased covariance, as np.cov (and so torch-fidelity) computes it."""
        mu = self.s1 / self.n
        return ((self.s2 - self.n * torch.outer(mu, mu)) / (self.n - 1)).numpy()

    @property
    def kept(self) -> torch.Tensor:
        return torch.cat(self._kept) if self._kept else torch.empty(0)


def fid_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between two Gaussians (torch-fidelity's formula, float64)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    a = {"mu": np.asarray(mu1, np.float64), "sigma": np.asarray(sigma1, np.float64)}
    b = {"mu": np.asarray(mu2, np.float64), "sigma": np.asarray(sigma2, np.float64)}
    return float(fid_statistics_to_metric(a, b, verbose=False)[KEY_METRIC_FID])


def fid_from_features(a: torch.Tensor, b: torch.Tensor) -> float:
    check_fid_n(min(len(a), len(b)), 0)
    sa, sb = FeatureStats.of(a, keep=0), FeatureStats.of(b, keep=0)
    return fid_from_stats(sa.mu, sa.sigma, sb.mu, sb.sigma)


def per_class_fid(features: torch.Tensor, labels: torch.Tensor, reference,
                  dim: int) -> dict[int, float]:
    """FID of each class's samples against the rows of that class in ``reference`` (a
    ReferenceStats with labels), for the classes where both sides have at least ``dim`` rows
    (below it the covariance is rank-deficient)."""
    out = {}
    for c in sorted(set(labels.tolist()) & set(reference.labels.tolist())):
        a, b = features[labels == c], reference.features[reference.labels == c]
        if min(len(a), len(b)) >= max(dim, 2):
            out[int(c)] = fid_from_features(a, b)
    return out


def kid_from_features(a: torch.Tensor, b: torch.Tensor, subsets: int = 100,
                      subset_size: int = 1000) -> tuple[float, float]:
    """KID mean and std (polynomial kernel, torch-fidelity's estimator and default seed)."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    size = min(subset_size, len(a), len(b))
    out = kid_features_to_metric(a.double(), b.double(), kid_subsets=subsets,
                                 kid_subset_size=size, verbose=False)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def pr_from_features(fake: torch.Tensor, real: torch.Tensor, k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019), torch-fidelity's k-NN version."""
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    # blockwise distances (2000 rows at a time): 10k x 10k at once costs ~1.5 GB of RAM
    out = prc_features_to_metric(fake.float(), real.float(), prc_neighborhood=k,
                                 prc_batch_size=2000, save_cpu_ram=True, verbose=False)
    return float(out[KEY_METRIC_PRECISION]), float(out[KEY_METRIC_RECALL])


def psnr(mse: float, data_range=(-1.0, 1.0)) -> float:
    """PSNR in dB with the data range as peak."""
    return 10 * math.log10((data_range[1] - data_range[0]) ** 2 / max(mse, 1e-20))
