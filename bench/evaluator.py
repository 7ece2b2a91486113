"""The shared evaluator: a pure function of (sampler, seeds, reference, metric settings).

Sample i is drawn from noise seeded by (seed, i) alone (cf. EDM's generate.py), so no
result depends on the batch size or on how seeds are split across batches. FID and KID
come from torch-fidelity's own formulas applied to features of the chosen extractor.
Timing follows DESIGN.md: one warm-up batch, device synchronisation, the median over
full-size batches, reported per image at a stated batch size.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Optional, Sequence

import torch

from bench.errors import BenchError
from bench.features import FeatureExtractor

MIN_FID_SAMPLES = 2  # a covariance needs two points; FID with n < feature dim is biased (say so)


def sample_seed(seed: int, i: int) -> int:
    """The generator seed of sample i. torch's CPU generator keeps only 32 bits, so (seed, i) is
    mixed into 32 bits with i added last: the n seeds of one run never collide (i < 2**32)."""
    return (int(seed) * 2654435761 + int(i)) % 2**32


def seed_noise(seed: int, indices: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Noise for samples ``indices``: sample i uses a generator seeded by (seed, i) only."""
    out = torch.empty((len(indices),) + tuple(shape))
    for row, i in enumerate(indices):
        gen = torch.Generator().manual_seed(sample_seed(seed, i))
        out[row] = torch.randn(shape, generator=gen)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass
class Generated:
    samples: torch.Tensor  # (n, *shape) on the CPU, in the teacher's data range
    seconds_per_image: float  # median over full-size batches after one warm-up batch
    batch_size: int


def generate(sampler: Callable, shape: tuple[int, ...], n: int, seed: int, batch_size: int,
             device: torch.device, progress: Optional[Callable[[int], None]] = None) -> Generated:
    """Draw n samples (seeds 0..n-1 under ``seed``) in batches and time each batch."""
    batches = [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    sampler(seed_noise(seed, batches[0], shape).to(device))  # warm-up: lazy init, caches
    _sync(device)
    out, times = [], []
    for idx in batches:
        noise = seed_noise(seed, idx, shape).to(device)
        start = time.perf_counter()
        x = sampler(noise)
        _sync(device)
        times.append((len(idx), time.perf_counter() - start))
        out.append(x.float().cpu())
        if progress:
            progress(len(idx))
    full = [sec for size, sec in times if size == len(batches[0])]
    return Generated(torch.cat(out), statistics.median(full) / len(batches[0]), len(batches[0]))


def features_of(extractor: FeatureExtractor, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    return torch.cat([extractor(chunk) for chunk in x.split(batch_size)])


def fid_from_features(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (torch-fidelity's formula)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    if min(len(a), len(b)) < MIN_FID_SAMPLES:
        raise BenchError(f"FID needs at least {MIN_FID_SAMPLES} samples per side, got {len(a)} and "
                         f"{len(b)}; raise --num-samples or rely on KID")
    sa, sb = fid_features_to_statistics(a.double()), fid_features_to_statistics(b.double())
    return float(fid_statistics_to_metric(sa, sb, verbose=False)[KEY_METRIC_FID])


def kid_from_features(a: torch.Tensor, b: torch.Tensor, subsets: int = 100,
                      subset_size: int = 1000) -> tuple[float, float]:
    """KID mean and std (polynomial kernel, torch-fidelity's estimator and default seed)."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    size = min(subset_size, len(a), len(b))
    out = kid_features_to_metric(a.double(), b.double(), kid_subsets=subsets,
                                 kid_subset_size=size, verbose=False)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def teacher_fidelity(x: torch.Tensor, anchor: torch.Tensor, data_range=(-1.0, 1.0)) -> tuple[float, float]:
    """MSE and PSNR (dB, peak = the data range) of samples against the teacher's many-step
    samples from the same noise: how faithfully a method reproduces its teacher's map."""
    mse = float((x.double() - anchor.double()).pow(2).mean())
    peak = float(data_range[1] - data_range[0])
    return mse, float(10 * torch.log10(torch.tensor(peak ** 2 / max(mse, 1e-20))))


@dataclasses.dataclass
class Evaluation:
    nfe: int
    n: int
    fid: float
    kid: float
    kid_std: float
    sample_seconds_per_image: float
    batch_size: int
    samples: torch.Tensor
    teacher_mse: float = float("nan")
    teacher_psnr: float = float("nan")

    def row(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "samples"}


def evaluate(sampler: Callable, nfe: int, shape: tuple[int, ...], reference_features: torch.Tensor,
             extractor: FeatureExtractor, n: int, seed: int, batch_size: int,
             device: torch.device, progress: Optional[Callable[[int], None]] = None,
             with_kid: bool = True) -> Evaluation:
    """Generate n samples with ``sampler`` and score them against the reference features."""
    gen = generate(sampler, shape, n, seed, batch_size, device, progress)
    feats = features_of(extractor, gen.samples)
    fid = fid_from_features(feats, reference_features)
    kid, kid_std = kid_from_features(feats, reference_features) if with_kid else (float("nan"),) * 2
    return Evaluation(nfe, n, fid, kid, kid_std, gen.seconds_per_image, gen.batch_size, gen.samples)
