"""Reliability: bad input is one clear line and exit status 2; nothing unsafe is ever loaded.

Cases covered elsewhere are not repeated:
unknown teacher or method and NFE out of range (tests/test_run.py::test_bad_input_one_line),
the sweep spec (tests/test_sweep*.py). `capfd` captures file descriptors, so a library that
prints or logs beside our message fails the one-line check too.
"""
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "bench" / "assets" / "digits"


def _one_line(args, capfd, message):
    code = main(["run", *args, "--quiet"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("bench: error: ") and re.search(message, err[0]), err
    return err[0]


def _digits_copy(tmp_path, name="teacher") -> Path:
    out = tmp_path / name
    shutil.copytree(DIGITS, out)
    return out


def _evil_pickle(path: Path, marker: Path) -> None:
    """A pickle that, if unpickled unsafely, runs a command that creates ``marker``."""
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Evil(), "step": 0}, path)


def test_malformed_yaml(tracking_uri, tmp_path, capfd):
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: gmm2d\nnfe: [1, 2\n")
    _one_line(["--config", str(bad), "--tracking-uri", tracking_uri], capfd, "is not valid YAML")


def test_yaml_is_safe_loaded(tracking_uri, tmp_path, capfd):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.yaml"
    bad.write_text(f"teacher: !!python/object/apply:os.system ['touch {marker}']\n")
    _one_line(["--config", str(bad), "--tracking-uri", tracking_uri], capfd, "is not valid YAML")
    assert not marker.exists()


@pytest.mark.parametrize("pair, message", [
    ("iterations=abc", r"bad value for boot config field 'iterations': 'abc'"),
    ("lr=fast", r"bad value for boot config field 'lr': 'fast'"),
    ("t_max=1.5", r"bad value for boot config field 't_max': '1.5'"),
])
def test_wrong_types_in_set(pair, message, tracking_uri, capfd):
    _one_line(["--method", "boot", "--teacher", "gmm2d", "--set", pair, "--tracking-uri", tracking_uri],
              capfd, message)


def test_teacher_path_that_does_not_exist(tracking_uri, tmp_path, capfd):
    _one_line(["--teacher-path", str(tmp_path / "nope"), "--tracking-uri", tracking_uri], capfd,
              r"teacher folder .*nope does not exist; pass an existing --teacher-path")


def test_corrupt_safetensors(tracking_uri, tmp_path, capfd):
    folder = _digits_copy(tmp_path)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated download
    _one_line(["--teacher-path", str(folder), "--tracking-uri", tracking_uri], capfd,
              r"cannot load the UNet in .*: the weights file is unreadable \(SafetensorError")
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run for a run that could not start


def test_weights_of_the_wrong_shape(tracking_uri, tmp_path, capfd):
    from safetensors.torch import save_file

    from conftest import tiny_unet

    folder = _digits_copy(tmp_path)
    save_file({k: v.contiguous() for k, v in tiny_unet().state_dict().items()},
              str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    _one_line(["--teacher-path", str(folder), "--tracking-uri", tracking_uri], capfd,
              r"the weights do not fit its config.json \(size mismatch for conv_in.weight")


def test_pickled_bin_weights_run_no_code(tracking_uri, tmp_path, capfd):
    folder = _digits_copy(tmp_path)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    marker = tmp_path / "pwned"
    _evil_pickle(folder / "unet" / "diffusion_pytorch_model.bin", marker)
    _one_line(["--teacher-path", str(folder), "--tracking-uri", tracking_uri], capfd,
              r"the weights file is unreadable \(UnpicklingError")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["missing", "corrupt", "pickle", "wrong shape"])
def test_bad_resume_checkpoint(kind, tracking_uri, tmp_path, capfd):
    ckpt, marker = tmp_path / "c.pt", tmp_path / "pwned"
    if kind == "corrupt":
        ckpt.write_bytes(b"PK\x03\x04 not really a zip")
    elif kind == "pickle":
        _evil_pickle(ckpt, marker)
    elif kind == "wrong shape":
        state = {"model": {"net.body.0.weight": torch.zeros(3, 3)}, "step": 1}
        torch.save(state, ckpt)
    message = {"missing": "does not exist", "corrupt": "cannot be loaded as weights",
               "pickle": "cannot be loaded as weights", "wrong shape": "does not fit this model"}[kind]
    _one_line(["--method", "boot", "--teacher", "gmm2d", "--nfe", "1", "--num-samples", "20",
               "--resume-from", str(ckpt), "--tracking-uri", tracking_uri], capfd, message)
    assert not marker.exists()
    if kind != "wrong shape":  # an unreadable file is refused before a run is opened
        assert not (tmp_path / "mlflow.db").exists()


def test_resume_run_of_another_configuration(tracking_uri, tmp_path, capfd):
    from mlflow.tracking import MlflowClient

    from bench.resume import HASH_TAG, TRAIN_HASH_TAG

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("distill-bench")
    run = client.create_run(experiment, tags={HASH_TAG: "other", TRAIN_HASH_TAG: "other"})
    old = client.create_run(experiment, tags={HASH_TAG: "other"})  # a run of a version before the tag
    capfd.readouterr()  # MLflow's own lines from creating the store
    _one_line(["--teacher", "gmm2d", "--nfe", "1", "--num-samples", "20", "--resume", run.info.run_id,
               "--tracking-uri", tracking_uri], capfd, "started with another configuration")
    _one_line(["--teacher", "gmm2d", "--nfe", "1", "--num-samples", "20", "--resume", old.info.run_id,
               "--tracking-uri", tracking_uri], capfd, "made by an older distill-bench")


UNSAFE = [
    (r"torch\.load\((?![^)]*weights_only=True)", "torch.load without weights_only=True"),
    (r"weights_only\s*=\s*False", "weights_only=False"),
    (r"\byaml\.(load|unsafe_load|full_load)\(", "yaml loads other than safe_load"),
    (r"\bpickle\.loads?\(|\bdill\.|\bcloudpickle\.loads?\(", "pickle loads"),
    (r"allow_pickle\s*=\s*True", "np.load(allow_pickle=True)"),
    (r"use_safetensors\s*=\s*False", "diffusers told to skip safetensors"),
]


def test_no_unsafe_loads_in_the_code_base():
    offenders = []
    for folder in ("bench", "methods", "reports", "sweeps", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            for pattern, what in UNSAFE:
                for m in re.finditer(pattern, text):
                    line = text.count("\n", 0, m.start()) + 1
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert not offenders, offenders


@pytest.mark.parametrize("args, host", [([], "127.0.0.1"), (["--host", "0.0.0.0"], "0.0.0.0")])
def test_bench_ui_binds_localhost_unless_told(args, host, tmp_path, monkeypatch):
    from bench import ui

    seen = {}
    monkeypatch.setattr(ui, "serve", lambda uri, host, port: seen.update(cmd=ui.server_command(uri, host, port)))
    main(["ui", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", *args])
    cmd = seen["cmd"]
    assert cmd[cmd.index("--host") + 1] == host


@pytest.mark.parametrize("text, message", [
    ("fidelity_samples: [3]\n", r"bad value for run field 'fidelity_samples': \[3\] \(expected int, got list \[3\]\)"),
    ("num_samples: 2.5\n", r"'num_samples': 2.5 \(expected int, got float 2.5\)"),
    ("seed: true\n", r"'seed': True \(expected int, got bool True\)"),
    ("experiment: 2024\n", r"'experiment': 2024 \(expected str, got int 2024\)"),
    ("nfe: {a: 1}\n", r"'nfe': \{'a': 1\} \(expected a list of int or none, got dict"),
    ("teacher_path: [a]\n", r"'teacher_path': \['a'\] \(expected str or none, got list"),
    ("set: 5\n", r"set: must be a mapping of method field: value, got int"),
    ("method: boot\nset: {lr: [1]}\n", r"bad value for boot config field 'lr': \[1\] \(expected float, got list"),
    ("method: boot\nset: {lr: .nan}\n", r"'lr': nan \(expected a finite number, got nan\)"),
])
def test_yaml_types_are_checked_when_the_config_is_built(text, message, tracking_uri, tmp_path, capfd):
    """Before: fidelity_samples: [3] failed with a TypeError after the run had started."""
    config = tmp_path / "c.yaml"
    config.write_text("teacher: gmm2d\n" + text)
    _one_line(["--config", str(config), "--tracking-uri", tracking_uri], capfd, message)
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("args, message", [
    (["--seed", "99999999999999999999"], r"invalid run: seed must be in 0\.\.4294967295, got 99999999999999999999"),
    (["--seed=-1"], r"seed must be in 0\.\.4294967295, got -1"),
    (["--nfe", "1,,2"], r"bad value for run field 'nfe': '1,,2' \(empty element in '1,,2'\)"),
    (["--nfe", "1,2,"], r"empty element in '1,2,'"),
    (["--experiment", ""], r"invalid run: experiment must be a non-empty name"),
    (["--reference", "stats"], r"unknown reference 'stats'; use auto, data, teacher, folder:PATH or stats:PATH.npz"),
    (["--fidelity-steps", "-3"], r"fidelity_steps must be >= 0, got -3"),
])
def test_values_out_of_range_are_one_line(args, message, tracking_uri, tmp_path, capfd):
    """Before: a seed too large for torch was a traceback; --nfe 1,,2 ran as 1,2; --experiment ''
    was blamed on --tracking-uri."""
    _one_line(["--teacher", "gmm2d", *args, "--tracking-uri", tracking_uri], capfd, message)
    assert not (tmp_path / "mlflow.db").exists()


def test_teacher_path_that_is_a_file(tracking_uri, tmp_path, capfd):
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    _one_line(["--teacher-path", str(tmp_path / "weights.safetensors"), "--tracking-uri", tracking_uri], capfd,
              r"teacher path .*weights.safetensors is a file; --teacher-path takes the folder that holds unet/")


@pytest.mark.parametrize("part, what", [("unet/config.json", "the UNet's config"),
                                        ("scheduler/scheduler_config.json", "the noise schedule's config")])
def test_broken_config_json_is_blamed_not_the_weights(part, what, tracking_uri, tmp_path, capfd):
    folder = _digits_copy(tmp_path)
    (folder / part).write_text("{broken")
    line = _one_line(["--teacher-path", str(folder), "--tracking-uri", tracking_uri], capfd,
                     rf"{part} \({what}\) is not valid JSON \(Expecting property name")
    assert "weights" not in line


def test_text_file_as_reference_statistics_leaves_no_run(tracking_uri, tmp_path, capfd):
    """Before: "pickled (object) data", and an empty FAILED run left in the store."""
    (tmp_path / "stats.txt").write_text("mu sigma\n")
    _one_line(["--teacher", "gmm2d", "--nfe", "1", "--num-samples", "50", "--metrics", "fid", "--reference",
               f"stats:{tmp_path / 'stats.txt'}", "--tracking-uri", tracking_uri], capfd,
              r"reference statistics .*stats.txt are not an .npz file \(a zip archive\); it must be an .npz")
    assert not (tmp_path / "mlflow.db").exists()


def test_truncated_checkpoint_message_is_whole_sentences(tracking_uri, tmp_path, capfd):
    torch.save({"model": {"w": torch.zeros(1000)}, "step": 1}, tmp_path / "c.pt")
    (tmp_path / "t.pt").write_bytes((tmp_path / "c.pt").read_bytes()[:2000])
    line = _one_line(["--method", "boot", "--teacher", "gmm2d", "--nfe", "1", "--num-samples", "20",
                      "--resume-from", str(tmp_path / "t.pt"), "--tracking-uri", tracking_uri], capfd,
                     r"cannot be loaded as weights: it is truncated, corrupt or pickled \(.*\.\); delete it to "
                     r"resume from an older one$")
    assert "your checkpoint file is)" not in line
    assert not (tmp_path / "mlflow.db").exists()  # refused before a run is opened: no empty FAILED run


def test_a_value_the_store_refuses_is_not_blamed_on_the_tracking_uri():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    from bench.tracking import store_error

    refused = store_error("sqlite:///x.db", MlflowException("Invalid experiment name: ''",
                                                            error_code=INVALID_PARAMETER_VALUE))
    assert str(refused) == "MLflow store sqlite:///x.db refused a value: Invalid experiment name: ''"
    down = store_error("http://h:1", ConnectionError("Connection refused"))
    assert str(down) == "cannot use MLflow store http://h:1: Connection refused; check --tracking-uri"
