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
from bench.metrics import (KEEP_FEATURES, FeatureStats, fid_from_features, fid_from_stats,  # noqa: F401 (API)
                           kid_from_features, per_class_fid, pr_from_features, psnr)

METRICS = ("fid", "kid", "pr")
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
    scores = _conditional_scores(spec, extractor, per_sample)
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
    _check_scores(ev, metrics, has_feats, bool(sq_err[1]), at)
    return ev


def _conditional_scores(spec: SampleSpec, extractor: FeatureExtractor,
                        per_sample: Optional[dict[str, Callable]]) -> dict[str, Callable]:
    """The per-sample scores of a class-conditional evaluation: ``per_sample``, and class accuracy
    where the extractor is a classifier; none for unconditional samples."""
    if not spec.num_classes:
        return {}
    scores = dict(per_sample or {})
    if extractor.classify is not None:
        scores["class_accuracy"] = lambda x, labels: (extractor.classes(x) == labels).double()
    return scores


def _check_scores(ev: Evaluation, metrics: Sequence[str], has_feats: bool, compared: bool, at: str) -> None:
    """A requested score (teacher_mse: where samples were ``compared`` with the anchor) that is not
    finite although every sample and feature was: refuse it."""
    scores = {"fid": ev.fid, "kid": ev.kid, "precision": ev.precision, "recall": ev.recall,
              "teacher_mse": ev.teacher_mse}
    wanted = {"fid": "fid" in metrics, "kid": "kid" in metrics and has_feats,
              "precision": "pr" in metrics and has_feats, "recall": "pr" in metrics and has_feats,
              "teacher_mse": compared}
    for name, value in scores.items():
        if wanted[name] and not math.isfinite(value):
            raise NonFinite(f"{name}{at} is {value} although every sample and feature is finite")
