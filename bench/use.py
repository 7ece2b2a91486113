"""``bench sample`` and ``bench export``: use a finished run's sampler without rerunning it.

A trained method's run holds its student as an MLflow model (bench.student_model); a
training-free method (DDIM, the solvers) samples the teacher itself, so its sampler is rebuilt
from the run's params, after checking that the teacher's weights are still the ones it used.
Image i of ``--seed S`` comes from the noise of seed (S, i), as in the run itself: with the
run's own seed (the default) the images are the run's own samples.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Optional

import torch

from bench.errors import BenchError


def find_run(client, run_id: str):
    try:
        run = client.get_run(run_id)
    except Exception:  # mlflow raises RESOURCE_DOES_NOT_EXIST and others
        raise BenchError(f"no MLflow run {run_id!r} in this store; pass --tracking-uri, or copy the id "
                         f"from `bench ui`") from None
    if "method" not in run.data.params:
        raise BenchError(f"run {run_id} is not a `bench run` (no method param)")
    return run


def run_sampler(client, run, uri: str, scratch: Path) -> tuple[Callable, list[int], dict]:
    """(sample(seeds, labels, nfe) -> images, NFEs it can take, {sample_shape, data_range,
    num_classes})."""
    from bench.student_model import load_sampler

    student = load_sampler(run.info.run_id, uri, scratch)
    if student is not None:
        spec = student.spec
        return student.sample, student.nfes, spec
    return _training_free(run)


def _training_free(run) -> tuple[Callable, list[int], dict]:
    """The sampler of a training-free run, rebuilt from its params."""
    from bench.portable import seed_noise
    from bench.assemble import load_run_teacher
    from bench.run import build_method, make_method, resolve_device
    from bench.run_config import RunConfig

    p = run.data.params
    source = p.get("teacher.source", "")
    path = source if os.path.isabs(source) and Path(source).is_dir() else None  # --teacher-path
    run_cfg = RunConfig(method=p["method"], teacher=p["teacher"], teacher_path=path,
                        guidance_scale=float(p.get("guidance_scale", 1.0)), prompts=p.get("prompts") or None)
    cls, cfg = build_method(run_cfg, {k[len("method."):]: v for k, v in p.items() if k.startswith("method.")})
    device = resolve_device("auto")
    teacher = load_run_teacher(run_cfg, device, path)
    if p.get("teacher.sha256", "") != teacher.provenance.sha256:
        raise BenchError(f"teacher {run_cfg.teacher}'s weights ({teacher.provenance.source}) are not the ones "
                         f"run {run.info.run_id} used (sha256 differs); restore them to sample this run")
    method, _ = make_method(run_cfg, cls, cfg, teacher, device)
    if method.training_stage() is not None:
        raise BenchError(f"run {run.info.run_id} ({p['method']}) trained a student but logged no student "
                         f"model (the method has no distilled() samplers, or the run predates them)")

    def sample(seeds, labels, nfe):
        with torch.no_grad():
            noise = seed_noise(seeds, teacher.sample_shape).to(device)
            cond = () if labels is None else (torch.as_tensor(labels, dtype=torch.long, device=device),)
            x = method.sampler(nfe)(noise, *cond)
            decode = teacher.decoder()  # latent teachers: the images, as the run scored them
            return (x if decode is None else decode(x)).float().cpu()

    nfes = sorted(int(k) for k in p.get("nfe", "").split(",") if k) or list(method.default_nfe())
    return sample, nfes, {"sample_shape": list(teacher.output_shape), "data_range": list(teacher.data_range),
                          "num_classes": teacher.num_classes}


def sample_images(run_id: str, uri: str, nfe: Optional[int], n: int, seed: Optional[int],
                  scratch: Path, label: Optional[int] = None) -> tuple[torch.Tensor, int, dict]:
    """(n images, the NFE used, the sampler's spec) from run ``run_id``; for a class-conditional
    run, image i has class ``label``, or i mod K as in the run's own evaluation."""
    from mlflow.tracking import MlflowClient

    from bench.evaluator import sample_seed

    client = MlflowClient(uri)
    run = find_run(client, run_id)
    sample, nfes, spec = run_sampler(client, run, uri, scratch)
    nfe = nfe or min(nfes)
    if nfe not in nfes:
        raise BenchError(f"run {run_id} samples with NFE {', '.join(map(str, nfes))}, not {nfe}; choose --nfe "
                         f"among them")
    base = int(run.data.params.get("seed", 0)) if seed is None else seed
    return sample([sample_seed(base, i) for i in range(n)], _labels(run_id, spec, n, label), nfe), nfe, spec


def _labels(run_id: str, spec: dict, n: int, label: Optional[int]) -> Optional[list[int]]:
    K = spec.get("num_classes")
    if not K:
        if label is not None:
            raise BenchError(f"run {run_id}'s teacher is unconditional; drop --label")
        return None
    if label is not None and not 0 <= label < K:
        raise BenchError(f"--label {label} is not a class of run {run_id}'s teacher; use 0..{K - 1}")
    return [label if label is not None else i % K for i in range(n)]


def write_images(x: torch.Tensor, data_range, out: Optional[Path], out_dir: Optional[Path], title: str) -> str:
    """A grid PNG at ``out``, or one PNG per image and ``samples.npz`` in ``out_dir``."""
    from bench.artifacts import save_grid, save_samples
    from bench.files import to_uint8

    if out_dir is None:
        save_grid(x, out, data_range, title=title, max_items=len(x))
        return str(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_samples(x, out_dir / "samples.npz")
    if x.dim() == 4:
        from PIL import Image

        for i, img in enumerate(to_uint8(x, data_range)):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(out_dir / f"{i:06d}.png")
    return f"{out_dir}/ ({len(x)} images and samples.npz)"


def export(run_id: str, uri: str, out: Path, nfe: Optional[int], scratch: Path) -> Path:
    """A diffusers folder: ``unet/`` (UNet2DModel.from_pretrained), ``sampling.json`` (the exact
    rule), ``portable.py`` (its reference implementation) and a README model card."""
    import json

    from mlflow.tracking import MlflowClient

    from bench.model_card import model_card
    from bench.student_model import load_sampler

    client = MlflowClient(uri)
    run = find_run(client, run_id)
    student = load_sampler(run_id, uri, scratch)
    if student is None:
        raise BenchError(f"run {run_id} ({run.data.params['method']}) trained no student: it samples the "
                         f"teacher ({run.data.params.get('teacher.source', '?')}) itself; `bench sample --run "
                         f"{run_id}` gives its images, and there is nothing to export")
    key = str(nfe or student.spec["default_nfe"])
    if key not in student.spec["samplers"]:
        raise BenchError(f"run {run_id}'s student samples with NFE {', '.join(map(str, student.nfes))}, "
                         f"not {key}; choose --nfe among them")
    entry = student.spec["samplers"][key]
    net = student.folder / entry["network"]
    if not (net / "config.json").is_file():
        raise BenchError(f"run {run_id}'s student is not a diffusers UNet (an MLP of an analytic teacher); "
                         f"load it with mlflow.pyfunc.load_model('runs:/{run_id}/student') instead")
    if out.exists() and any(out.iterdir()):
        raise BenchError(f"--out {out} exists and is not empty; give a new folder")
    shutil.copytree(net, out / "unet", dirs_exist_ok=True)
    spec = {**{k: v for k, v in student.spec.items() if k != "samplers"}, "default_nfe": int(key),
            "samplers": {key: {"network": "unet", "rule": entry["rule"]}}}
    (out / "sampling.json").write_text(json.dumps(spec, indent=1))
    shutil.copy(Path(__file__).with_name("portable.py"), out / "portable.py")
    (out / "README.md").write_text(model_card(run, spec, int(key)))
    return out
