"""Reference statistics for FID/KID/PR, cached on disk under a key of what defines them.

Specs (``--reference``):
  auto            the teacher's registered data if it has some, else ``teacher``
  data            the teacher's registered data set (digits, exact draws of analytic teachers)
  teacher         data-free: the teacher's own DDIM samples (``reference_steps``, ``reference_samples``)
  folder:PATH     an image folder (PNG/JPEG at the teacher's resolution and channels)
  stats:PATH.npz  precomputed ``mu``/``sigma`` (pytorch-fid / clean-fid layout); FID only
The cache key (bench.cache) hashes the extractor (name, weights, code version) and everything
the spec depends on: for ``data`` the data set's contents; for ``teacher`` the teacher's
fingerprint (weights, schedule, parameterisation), steps, n, seed and the sampler's code
version; for ``folder`` the files' names, sizes and times.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from bench.cache import cache_file, definition_array
from bench.errors import BenchError, first_line
from bench.evaluator import FeatureStats, ReferenceStats, SampleSpec, generate, seed_labels
from bench.features import FeatureExtractor
from bench.files import save_npz_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
REFERENCE_SEED_OFFSET = 0x5EED  # teacher references use seeds disjoint from the evaluated ones


def _folder_images(path: Path) -> list[Path]:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BenchError(f"reference folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _load_folder(files: list[Path], shape: tuple[int, ...], data_range) -> torch.Tensor:
    from PIL import Image

    c, h, w = shape
    out = []
    for f in files:
        img = np.asarray(Image.open(f).convert("L" if c == 1 else "RGB"))
        if img.shape[:2] != (h, w):
            raise BenchError(f"reference image {f} is {img.shape[1]}x{img.shape[0]}, the teacher makes "
                             f"{w}x{h}; resize the folder or pick the matching teacher")
        x = torch.from_numpy(img.copy()).float().reshape(h, w, -1).permute(2, 0, 1) / 255
        out.append(x * (data_range[1] - data_range[0]) + data_range[0])
    return torch.stack(out)


def _stats_file(path: Path, dim: int) -> ReferenceStats:
    need = "it must be an .npz with arrays mu and sigma (e.g. from pytorch-fid or clean-fid)"
    if not path.is_file():
        raise BenchError(f"reference statistics {path} {'is a folder' if path.is_dir() else 'do not exist'}; {need}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"PK\x03\x04":  # every .npz is a zip file; np.load would guess "pickled data"
        raise BenchError(f"reference statistics {path} are not an .npz file (a zip archive); {need}")
    try:
        with np.load(path) as data:
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    except (OSError, KeyError, ValueError, EOFError) as exc:
        raise BenchError(f"cannot read reference statistics {path} ({first_line(exc, 120)}); {need}") from None
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise BenchError(f"reference statistics {path} hold NaN or inf; recompute them")
    if dim > 0 and (mu.shape != (dim,) or sigma.shape != (dim, dim)):
        raise BenchError(f"reference statistics {path} have mu {mu.shape} and sigma {sigma.shape}, but "
                         f"the extractor gives {dim}-D features; use statistics of the same extractor")
    return ReferenceStats(mu, sigma, n=-1, features=None, description=f"stats:{path}")


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f).encode())
        h.update(str(f.stat().st_size).encode())
        h.update(str(f.stat().st_mtime_ns).encode())
    return h.hexdigest()[:16]


def build_reference(spec: str, teacher, extractor: FeatureExtractor, *, n: int, steps: int, seed: int,
                    batch_size: int, device: torch.device,
                    on_compute: Optional[Callable[[], None]] = None) -> ReferenceStats:
    """Reference for ``teacher`` under ``spec``, computed once and then read from the cache.
    ``on_compute()`` is called whenever features are actually computed."""
    kind, _, arg = spec.partition(":")
    if kind == "auto":
        kind = "data" if teacher.dataset is not None else "teacher"
    if kind == "stats":
        return _stats_file(Path(arg), extractor.dim)
    if kind not in ("data", "teacher", "folder"):
        raise BenchError(f"unknown reference {spec!r}; use auto, data, teacher, folder:PATH or stats:PATH")
    definition: dict = {"kind": kind, "extractor": extractor.name, "weights": extractor.weights_sha256,
                        "extractor_version": extractor.version, "shape": list(teacher.output_shape)}
    make, labels = _recipe(kind, arg, teacher, extractor, definition,
                           n=n, steps=steps, seed=seed, batch_size=batch_size, device=device)
    path = cache_file("references", definition, prefix=extractor.name)
    if path.is_file():
        with np.load(path) as d:
            kept = torch.from_numpy(d["labels"]) if "labels" in d.files else None
            return ReferenceStats(d["mu"], d["sigma"], int(d["n"]), torch.from_numpy(d["features"]),
                                  f"{kind} (cached {path.name})", kept)
    if on_compute:
        on_compute()
    stats = make()
    kept = None if labels is None else labels[: len(stats.kept)]  # the class of each kept feature row
    ref = ReferenceStats(stats.mu, stats.sigma, stats.n, stats.kept, kind, kept)
    save_npz_atomic(path, mu=ref.mu, sigma=ref.sigma, n=ref.n, features=ref.features.numpy(),
                    definition=definition_array(definition), **({} if kept is None else {"labels": kept.numpy()}))
    return ref


def _recipe(kind: str, arg: str, teacher, extractor: FeatureExtractor, definition: dict, *, n: int, steps: int,
            seed: int, batch_size: int, device: torch.device) -> tuple[Callable, Optional[torch.Tensor]]:
    """How to compute reference ``kind``: adds what identifies it to ``definition`` (its cache key)
    and returns the computation and the class of each row (per-class FID; None: unlabelled)."""
    labels = None
    if kind == "data":
        if teacher.dataset is None:
            raise BenchError("this teacher has no registered data set; use --reference teacher, "
                             "folder:PATH or stats:PATH")
        data = teacher.dataset()
        definition.update(n=len(data), data=_tensor_digest(data), source=teacher.provenance.source)
        if teacher.num_classes and teacher.dataset_labels is not None:  # per-class FID
            labels = torch.as_tensor(teacher.dataset_labels()).long()
            definition.update(labels=_tensor_digest(labels))
        return (lambda: _stats_of(data, teacher, extractor)), labels
    if kind == "teacher":
        from bench.sampling import SAMPLER_VERSION

        definition.update(teacher=teacher.fingerprint(), steps=steps, n=n, seed=seed, sampler=SAMPLER_VERSION)
        # conditional: labels i mod K, all classes alike; latent teachers: decoded images
        sample = SampleSpec.of(teacher, n, seed + REFERENCE_SEED_OFFSET, batch_size, device)
        if teacher.num_classes:
            definition.update(labels="i mod K")
            labels = seed_labels(range(n), teacher.num_classes)
        return (lambda: _teacher_stats(teacher, extractor, sample, steps)), labels
    files = _folder_images(Path(arg))  # kind == "folder": build_reference refused the rest
    if len(teacher.output_shape) != 3:
        raise BenchError(f"teacher makes {teacher.output_shape} vectors, not images; an image "
                         f"folder cannot be its reference")
    definition.update(folder=str(Path(arg).resolve()), digest=_digest(files), n=len(files))
    return (lambda: _stats_of(_load_folder(files, teacher.output_shape, teacher.data_range),
                              teacher, extractor)), None


def _tensor_digest(x: torch.Tensor) -> str:
    return hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _stats_of(x: torch.Tensor, teacher, extractor: FeatureExtractor) -> FeatureStats:
    if tuple(x.shape[1:]) != tuple(teacher.output_shape):
        raise BenchError(f"reference samples have shape {tuple(x.shape[1:])}, the teacher makes "
                         f"{teacher.output_shape}; use a reference of matching shape and channels")
    stats = FeatureStats()
    for chunk in x.split(500):
        stats.update(extractor(chunk))
    return stats


def _teacher_stats(teacher, extractor, sample: SampleSpec, steps: int) -> FeatureStats:
    """Features of the teacher's DDIM-``steps`` samples, streamed: no image is kept."""
    from bench.sampling import teacher_sampler

    stats = FeatureStats()
    with torch.no_grad():
        generate(teacher_sampler(teacher, steps), sample, on_batch=lambda idx, x: stats.update(extractor(x)),
                 keep=0)
    return stats
