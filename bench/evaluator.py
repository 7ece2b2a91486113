"""The shared evaluator: a pure function of (sampler, seeds, reference, metric settings).

Sample i is drawn from noise seeded by (seed, i) alone (cf. EDM's generate.py), and for a
class-conditional teacher with label i mod K, so no result depends on the batch size or on how
seeds are split across batches, and n samples cover the K classes evenly. Features are
computed batch by batch and folded into float64 running sums, so FID at n = 50,000 never
holds all images or features in memory; KID and precision/recall use the first
``keep_features`` features. FID, KID and precision/recall are torch-fidelity's own formulas.
Timing follows DESIGN.md: one warm-up batch, device synchronisation, the median over
full-size batches, reported per image at a stated batch size.

A score of non-finite samples or features is not a result (uint8 conversion turns NaN into
some colour, and FID is then computed on that): any non-finite sample, feature or metric
stops the evaluation with :class:`NonFinite`. Checks that need no samples
(:func:`check_evaluation`) run before a run distils anything.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from bench.eval_checks import PR_NEIGHBOURS, NonFinite, check_finite, check_fid_n  # noqa: F401 (API)
from bench.features import FeatureExtractor

METRICS = ("fid", "kid", "pr")
KEEP_FEATURES = 10_000  # KID subsets of 1000 and k-NN precision/recall need no more
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


def seed_labels(indices: Sequence[int], num_classes: int) -> torch.Tensor:
    """Class labels of samples ``indices``: i mod K, a function of the sample's index alone."""
    return torch.as_tensor(list(indices), dtype=torch.long) % num_classes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def per_class_fid(features: torch.Tensor, labels: torch.Tensor, reference: ReferenceStats,
                  dim: int) -> dict[int, float]:
    """FID of each class's samples against the reference rows of that class, for the classes
    where both sides have at least ``dim`` rows (below it the covariance is rank-deficient)."""
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


@dataclasses.dataclass
class ReferenceStats:
    """What samples are scored against: FID statistics, and features for KID/PR if known."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    features: Optional[torch.Tensor] = None  # None for a statistics-only (.npz) reference
    description: str = ""
    labels: Optional[torch.Tensor] = None  # the class of each row of ``features``, where known

    @classmethod
    def from_features(cls, features: torch.Tensor, description: str = "",
                      labels: Optional[torch.Tensor] = None) -> "ReferenceStats":
        stats = FeatureStats.of(features)
        return cls(stats.mu, stats.sigma, stats.n, stats.kept, description,
                   None if labels is None else torch.as_tensor(labels)[: len(stats.kept)].long())


@dataclasses.dataclass
class Evaluation:
    nfe: Optional[int]  # a label: the step count of the sampler evaluated (None: unlabelled)
    n: int
    fid: float
    kid: float
    kid_std: float
    precision: float
    recall: float
    sample_seconds_per_image: float
    batch_size: int
    samples: torch.Tensor  # the first ``keep_samples`` samples, on the CPU
    teacher_mse: float = float("nan")
    teacher_psnr: float = float("nan")
    sample_peak_memory_mb: float = float("nan")
    nfe_counted: float = float("nan")  # network calls per batch, as counted (bench.nfe); set by run
    class_accuracy: float = float("nan")  # conditional: share the classifier reads as the requested class
    clip_score: float = float("nan")  # text-to-image: mean CLIP score of image and prompt (--clip-model)
    per_class_fid: dict = dataclasses.field(default_factory=dict)  # class -> FID against that class's reference

    def row(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("samples", "per_class_fid")}

    def metrics(self) -> dict[str, float]:
        keys = ("fid", "kid", "kid_std", "precision", "recall", "sample_seconds_per_image",
                "teacher_mse", "teacher_psnr", "sample_peak_memory_mb", "nfe_counted", "class_accuracy",
                "clip_score")
        out = {k: getattr(self, k) for k in keys if not math.isnan(getattr(self, k))}
        out["sample_images_per_second"] = 1.0 / max(self.sample_seconds_per_image, 1e-12)
        return out


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """Which samples: n of them, sample i from noise seeded by (seed, i) (and with label i mod
    ``num_classes`` where the teacher is class-conditional), drawn in batches."""

    shape: tuple[int, ...]
    n: int
    seed: int
    batch_size: int
    device: torch.device
    num_classes: Optional[int] = None
    decode: Optional[Callable] = None  # latent teachers: latents -> images, after the sampler

    @classmethod
    def of(cls, teacher, n: int, seed: int, batch_size: int, device) -> "SampleSpec":
        """The samples of ``teacher``: its shape, its classes (labels i mod K), its decoder."""
        return cls(teacher.sample_shape, n, seed, batch_size, device, teacher.num_classes, teacher.decoder())

    def batches(self) -> list[range]:
        return [range(i, min(i + self.batch_size, self.n)) for i in range(0, self.n, self.batch_size)]

    def labels(self, indices: Sequence[int]) -> Optional[torch.Tensor]:
        return seed_labels(indices, self.num_classes).to(self.device) if self.num_classes else None

    def inputs(self, indices: Sequence[int]) -> tuple:
        """The sampler's arguments for samples ``indices``: (noise,) or (noise, labels)."""
        noise, labels = seed_noise(self.seed, indices, self.shape).to(self.device), self.labels(indices)
        return (noise,) if labels is None else (noise, labels)


@dataclasses.dataclass
class Generated:
    samples: torch.Tensor  # the first ``keep`` samples, on the CPU, in the teacher's data range
    seconds_per_image: float  # median over full-size batches after one warm-up batch
    batch_size: int
    peak_memory_mb: float = float("nan")  # CUDA only: peak allocated while sampling


def generate(sampler: Callable, spec: SampleSpec, *, progress: Optional[Callable[[int], None]] = None,
             on_batch: Optional[Callable[[range, torch.Tensor], None]] = None,
             keep: Optional[int] = None) -> Generated:
    """Draw the samples of ``spec`` batch by batch, timing each batch.

    ``on_batch(indices, x)`` sees every batch (feature streaming); only the first ``keep``
    samples (default: all) are returned.
    """
    keep, device, batches = spec.n if keep is None else keep, spec.device, spec.batches()
    warm = sampler(*spec.inputs(batches[0]))  # warm-up: lazy init, caches
    if spec.decode is not None:
        spec.decode(warm)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out, times = [], []
    for idx in batches:
        inputs = spec.inputs(idx)
        start = time.perf_counter()
        x = sampler(*inputs)
        if spec.decode is not None:  # timed: an image of a latent model costs its decoding too
            x = spec.decode(x)
        _sync(device)
        times.append((len(idx), time.perf_counter() - start))
        x = x.float()
        if on_batch:
            on_batch(idx, x)
        if idx.start < keep:
            out.append(x[: keep - idx.start].cpu())
        if progress:
            progress(len(idx))
    full = [sec for size, sec in times if size == len(batches[0])]
    samples = torch.cat(out) if out else torch.empty((0,) + tuple(spec.shape))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return Generated(samples, statistics.median(full) / len(batches[0]), len(batches[0]), peak)


def evaluate(sampler: Callable, spec: SampleSpec, reference: ReferenceStats, extractor: FeatureExtractor, *,
             nfe: Optional[int] = None, metrics: Sequence[str] = METRICS,
             anchor: Optional[torch.Tensor] = None, data_range=(-1.0, 1.0),
             keep_samples: Optional[int] = None,
             progress: Optional[Callable[[int], None]] = None,
             per_sample: Optional[dict[str, Callable]] = None) -> Evaluation:
    """Generate the samples of ``spec`` with ``sampler``, stream their features and score them.

    ``nfe`` labels the result; ``anchor``: the teacher's many-step samples for the first
    len(anchor) seeds, on which teacher fidelity is measured. Class-conditional samples are also
    read by the extractor's classifier, where it has one: ``class_accuracy`` is the share read
    as the requested label (the fidelity measure conditional papers report as classification
    accuracy). ``per_sample``: more conditional scores by name (an Evaluation field), each
    ``fn(samples, labels)`` -> a value per sample, averaged over all samples (CLIP score).
    """
    if "fid" in metrics:
        check_fid_n(spec.n, extractor.dim)
    at = f" at NFE {nfe}" if nfe is not None else ""
    stats = FeatureStats()
    sq_err = [0.0, 0]
    scores = dict(per_sample or {}) if spec.num_classes else {}
    if spec.num_classes and extractor.classify is not None:
        scores["class_accuracy"] = lambda x, labels: (extractor.classes(x) == labels).double()
    sums = {name: [0.0, 0] for name in scores}  # total and count of each per-sample score

    def on_batch(idx: range, x: torch.Tensor) -> None:
        check_finite(x, f"samples (seeds {idx.start}..{idx.stop - 1}){at}")
        features = extractor(x)
        check_finite(features, f"feature vectors (seeds {idx.start}..{idx.stop - 1}){at}")
        stats.update(features)
        for name, fn in scores.items():
            sums[name][0] += float(fn(x, seed_labels(idx, spec.num_classes)).sum())
            sums[name][1] += len(idx)
        if anchor is not None and idx.start < len(anchor):
            m = min(len(idx), len(anchor) - idx.start)
            diff = x[:m].double().cpu() - anchor[idx.start: idx.start + m].double()
            sq_err[0] += float(diff.pow(2).sum())
            sq_err[1] += diff.numel()

    gen = generate(sampler, spec, progress=progress, on_batch=on_batch, keep=keep_samples)
    nan = float("nan")
    fid = fid_from_stats(stats.mu, stats.sigma, reference.mu, reference.sigma) if "fid" in metrics else nan
    has_feats = reference.features is not None and len(reference.features) > 1
    kid, kid_std = kid_from_features(stats.kept, reference.features) if "kid" in metrics and has_feats else (nan, nan)
    prec, rec = pr_from_features(stats.kept, reference.features) if "pr" in metrics and has_feats else (nan, nan)
    ev = Evaluation(nfe, spec.n, fid, kid, kid_std, prec, rec, gen.seconds_per_image, gen.batch_size,
                    gen.samples, sample_peak_memory_mb=gen.peak_memory_mb)
    for name, (total, count) in sums.items():
        setattr(ev, name, total / count)
    if "fid" in metrics and spec.num_classes and reference.labels is not None:
        ev.per_class_fid = per_class_fid(stats.kept, seed_labels(range(len(stats.kept)), spec.num_classes),
                                         reference, extractor.dim)
    if sq_err[1]:
        mse = sq_err[0] / sq_err[1]
        ev.teacher_mse, ev.teacher_psnr = mse, psnr(mse, data_range)
    scores = {"fid": fid, "kid": kid, "precision": prec, "recall": rec, "teacher_mse": ev.teacher_mse}
    wanted = {"fid": "fid" in metrics, "kid": "kid" in metrics and has_feats,
              "precision": "pr" in metrics and has_feats, "recall": "pr" in metrics and has_feats,
              "teacher_mse": bool(sq_err[1])}
    for name, value in scores.items():
        if wanted[name] and not math.isfinite(value):
            raise NonFinite(f"{name}{at} is {value} although every sample and feature is finite")
    return ev
