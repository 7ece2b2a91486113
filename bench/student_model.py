"""A trained student as an MLflow pyfunc model: ``runs:/<id>/student`` samples images from seeds.

The folder is written locally with ``mlflow.pyfunc.save_model`` and logged as the run's
artifact ``student/`` through the run's spooled tracker, so it survives a store that is down
like every other artifact (``runs:/`` URIs load plain artifact folders). Inside it:
``artifacts/student/`` (``sampling.json`` and one network per NFE, see bench.portable) and
``code/portable.py``; ``python_model.py`` is bench/student_pyfunc.py.
"""
from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import sys
import warnings
from pathlib import Path
import torch

from bench.errors import BenchError
from bench.method import Distilled

ARTIFACT = "student"
HERE = Path(__file__).resolve().parent


def bare_network(net):
    """The network as it is saved: a diffusers UNet without the harness's call adapter."""
    from bench.teachers.diffusers_teacher import _UNetNet

    return net.unet if isinstance(net, _UNetNet) else net


def save_network(net, folder: Path) -> None:
    """A UNet2DModel with ``save_pretrained``; a TimeMLP as ``network.json`` + safetensors; a
    PromptUNet as its UNet's folder, the prompts' states and ``network.json``."""
    from bench.files import save_weights

    from bench.portable import PromptUNet

    net = bare_network(net)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(net, PromptUNet):  # its UNet as diffusers saves it, and the prompts' states
        from safetensors.torch import save_file

        save_network(net.unet, folder / "unet")
        save_file({"context": net.context.detach().cpu().contiguous()}, str(folder / "context.safetensors"))
        (folder / "network.json").write_text(json.dumps({"class": "PromptUNet", "kwargs": {}}))
    elif hasattr(net, "save_pretrained"):  # a CPU copy in the default layout: safetensors refuses
        # the strided weights of a channels_last network (bench perf's GPU setting)
        net = copy.deepcopy(net).cpu().to(memory_format=torch.contiguous_format)
        net.save_pretrained(str(folder), safe_serialization=True)
    elif hasattr(net, "kwargs"):
        (folder / "network.json").write_text(json.dumps({"class": type(net).__name__, "kwargs": net.kwargs}))
        save_weights(net, folder / "model.safetensors")
    else:
        raise BenchError(f"cannot save a student network of type {type(net).__name__}: the method's "
                         f"distilled() must return a diffusers UNet or a bench.portable network")


def write_student(samplers: dict[int, Distilled], teacher, folder: Path) -> Path:
    """``sampling.json`` and the networks of ``samplers`` (NFE -> Distilled) in ``folder``."""
    entries = {}
    for nfe, d in sorted(samplers.items()):
        save_network(d.network, folder / "nets" / f"nfe_{nfe}")
        entries[str(nfe)] = {"network": f"nets/nfe_{nfe}", "rule": d.rule}
    spec = {"sample_shape": list(teacher.sample_shape), "data_range": list(teacher.data_range),
            "num_classes": teacher.num_classes, "default_nfe": min(samplers), "samplers": entries}
    (folder / "sampling.json").write_text(json.dumps(spec, indent=1))
    return folder


def _requirements() -> list[str]:
    out = []
    for name in ("mlflow", "torch", "diffusers", "safetensors", "numpy", "pandas"):
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def save_pyfunc(samplers: dict[int, Distilled], teacher, out: Path, tmp: Path, metadata: dict) -> Path:
    """The MLflow model folder ``out`` (written via ``tmp``, a scratch folder)."""
    import numpy as np
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars for a local copy
    student = write_student(samplers, teacher, tmp / "student")
    signature = ModelSignature(
        inputs=Schema([ColSpec("long", "seed"), ColSpec("long", "label", required=False)]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, *teacher.sample_shape))]),
        params=ParamSchema([ParamSpec("nfe", "long", min(samplers)), ParamSpec("device", "string", "auto")]))
    with warnings.catch_warnings():  # advice to add an input example: the signature says it all
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(str(out), python_model=str(HERE / "student_pyfunc.py"),
                                 code_paths=[str(HERE / "portable.py")], artifacts={"student": str(student)},
                                 signature=signature, pip_requirements=_requirements(), metadata=metadata)
    return out


def add_student(method, teacher, out_dir: Path, tmp: Path, params: dict) -> bool:
    """The method's student as the MLflow model ``out_dir/student``; False for training-free methods."""
    samplers = method.distilled()
    if not samplers:
        return False
    keep = ("method", "label", "teacher", "seed", "teacher.source", "teacher.revision", "teacher.sha256")
    save_pyfunc(samplers, teacher, out_dir / ARTIFACT, tmp, {k: str(params[k]) for k in keep if k in params})
    return True


def register(run_id: str, name: str) -> str:
    """Register the run's student under ``name``; returns the new version."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        version = mlflow.register_model(f"runs:/{run_id}/{ARTIFACT}", name)
    except Exception as exc:  # the store refused the name, or is down
        from bench.errors import root_cause

        raise BenchError(f"cannot register the student of run {run_id} as {name!r}: {root_cause(exc)}") from None
    return str(version.version)


def register_logged(tracker, name: str) -> None:
    """``--register NAME`` at the end of a run (a store that is down: the model waits in the spool)."""
    if tracker.offline is not None:
        print(f"bench: warning: the student was not registered as {name!r}: the MLflow store is down; "
              f"after `bench sync`, register runs:/{tracker.run_id}/{ARTIFACT}", file=sys.stderr)
        return
    print(f"registered the student as {name!r}, version {register(tracker.run_id, name)}")


def load_sampler(run_id: str, uri: str, dest: Path):
    """The run's student as a bench.portable.StudentSampler (downloaded into ``dest``), or None
    if the run logged no student model."""
    from mlflow.tracking import MlflowClient

    from bench.portable import StudentSampler

    client = MlflowClient(uri)
    if not any(f.path == ARTIFACT for f in client.list_artifacts(run_id)):
        return None
    local = Path(client.download_artifacts(run_id, f"{ARTIFACT}/artifacts/student", str(dest)))
    return StudentSampler(local, "auto")
