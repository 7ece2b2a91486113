"""Fuzz the config and CLI parsing layer (issue #15): thousands of random `bench run` command
lines, YAML configs and sweep specs, drawn from the config dataclasses' own fields and types
(valid values, values of the wrong type, junk text). Every rejection must be one line of our
own error type (BenchError), never a traceback; every acceptance must round-trip through
MLflow params, the YAML/JSON form and the command line, and its method must be built on a
teacher (the exact gmm2d) as ``bench run`` builds it, or refused in one line. The generator is
seeded: a failure names the input, and the same seed reproduces it.
"""
import dataclasses
import json
import random
import time
import typing

import pytest
import yaml

from bench import config as cfgs
from bench.errors import BenchError
from bench.registry import METHODS
from bench.run import build_method
from bench.run_config import RunConfig

SEED = 15
JUNK_TEXT = ["", " ", "none", "None", "null", "nan", "inf", "-inf", "1e999", "0", "-1", "1", "2", "64", "3.5",
             "-2.5", "1e-4", "1,,2", "1,2,", ",", "[1]", "(1, 2)", "1,2", "true", "false", "yes", "maybe",
             "a\nb", "\t", "ü", "💥", "x" * 300, str(2**70), str(-2**70), "0x10", "1_000", "٣", " 7 ", "{a: 1}",
             "fid", "fid,kid", "fid,,kid", "pr,nope", "stats:", "stats:x.npz", "folder:", "auto", "teacher",
             "cuda:0", "--", "=", "a=b"]
JUNK_VALUES = [None, True, False, 0, 1, -1, 2, 7, 2**70, -2**70, 1.5, -0.5, 1e300, float("nan"), float("inf"),
               [], [1], [1, 2], [0], ["fid"], ["fid", "pr"], [[1]], {"a": 1}, "text", "", "1,2", 3.0]
METHOD_NAMES = sorted(METHODS)


def _valid(tp, field, rng):
    """A value of type ``tp`` that may well be accepted."""
    origin, args = typing.get_origin(tp), [a for a in typing.get_args(tp) if a is not type(None)]
    choices = field.metadata.get("choices")
    if origin is typing.Union:
        return None if rng.random() < 0.3 else _valid(args[0], field, rng)
    if origin is tuple:
        if choices:
            return tuple(rng.sample(choices, rng.randint(1, len(choices))))
        return tuple(_valid(args[0], field, rng) for _ in range(rng.randint(1, 4)))
    if choices:
        return rng.choice(choices)
    if tp is bool:
        return rng.random() < 0.5
    if tp is int:
        return rng.choice([0, 1, 2, 3, 16, 64, 250, 1000, rng.randrange(-5, 5000)])
    if tp is float:
        return rng.choice([0.0, 1e-4, 0.5, 1.0, 20.0, rng.uniform(-1, 100)])
    return rng.choice(["digits", "gmm2d", "x y", "auto", "teacher", f"folder:/d{rng.randrange(9)}", str(field.default)])


def _text(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def _draw(cls, rng, typed: bool) -> dict:
    """Some fields of ``cls`` with valid, mistyped or junk values (typed: YAML's Python values)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for field in rng.sample(cfgs.fields(cls), min(len(cfgs.fields(cls)), rng.randint(1, 4))):
        roll = rng.random()
        if roll < 0.6:
            value = _valid(hints[field.name], field, rng)
            out[field.name] = value if typed else _text(value)
        else:
            out[field.name] = rng.choice(JUNK_VALUES if typed and roll < 0.8 else JUNK_TEXT)
    if rng.random() < 0.03:
        out[rng.choice(["nope", "Seed", "num-samples", 5])] = 1  # unknown names
    return out


def _method(rng) -> str:
    return rng.choice(METHOD_NAMES + METHOD_NAMES + ["nope", ""])


class Tally:
    def __init__(self):
        self.tried = self.accepted = self.built = 0
        self.failures: list[str] = []
        self.teacher = None

    def attempt(self, what, build):
        """``build()`` -> (run config, method config) or a BenchError; anything else is a failure."""
        self.tried += 1
        try:
            run_cfg, method_cfg = build()
        except BenchError as exc:
            text = str(exc)
            if not text or "\n" in text or "\r" in text or len(text) > 1000:
                self.failures.append(f"not one line for {what!r}: {text!r}")
            return
        except Exception as exc:  # noqa: BLE001 (the point: nothing else may escape)
            self.failures.append(f"{type(exc).__name__} for {what!r}: {exc}")
            return
        self.accepted += 1
        try:
            _round_trips(run_cfg, method_cfg)
        except (AssertionError, BenchError) as exc:
            self.failures.append(f"no round trip for {what!r}: {exc!r}")
        if getattr(method_cfg, "mlp_width", 0) <= 1024:  # the method on a teacher: what needs one
            self.build(what, run_cfg, method_cfg)

    def build(self, what, run_cfg, method_cfg) -> None:
        """The method on the gmm2d teacher, as run() makes it (a few ms for an MLP student)."""
        import torch

        from bench.run import make_method
        from bench.teachers import load_teacher

        self.teacher = self.teacher or load_teacher("gmm2d")
        try:
            make_method(run_cfg, METHODS.get(run_cfg.method), method_cfg, self.teacher, torch.device("cpu"))
            self.built += 1
        except BenchError as exc:
            if "\n" in str(exc):
                self.failures.append(f"not one line for {what!r}: {exc}")
        except Exception as exc:  # noqa: BLE001
            self.failures.append(f"{type(exc).__name__} making the method for {what!r}: {exc}")


def _round_trips(run_cfg, method_cfg) -> None:
    """Through MLflow params, the YAML/JSON form (lists) and the command line."""
    assert cfgs.from_params(RunConfig, cfgs.to_params(run_cfg)) == run_cfg, "params"
    cls = type(method_cfg)
    assert cfgs.from_params(cls, cfgs.to_params(method_cfg, "method."), "method.") == method_cfg, "method params"
    assert cfgs.replace(RunConfig(), json.loads(cfgs.to_json(run_cfg))) == run_cfg, "json"
    assert cfgs.replace(cls(), json.loads(cfgs.to_json(method_cfg))) == method_cfg, "method json"
    argv = ["run"] + [f"--{k.replace('_', '-')}={v}" for k, v in cfgs.to_params(run_cfg).items()
                      if not (v == "None" and getattr(run_cfg, k) is None)]
    argv += [f"--set={k}={v}" for k, v in cfgs.to_params(method_cfg).items()]
    again, sets = _cli(argv)
    assert again == run_cfg and build_method(again, sets)[1] == method_cfg, "command line"


_PARSER = []


def _cli(argv):
    from bench import cli

    if not _PARSER:
        _PARSER.append(cli._parser())
    return cli._run_config(_PARSER[0].parse_args(argv))


def _from_cli(argv):
    run_cfg, sets = _cli(argv)
    return run_cfg, build_method(run_cfg, sets)[1]


def _from_yaml(path, data):
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return _from_cli(["run", f"--config={path}"])


def _from_sweep(path, data):
    from sweeps.spec import load_spec

    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    spec = load_spec(path)
    run_cfg = cfgs.replace(RunConfig(method=spec.method, teacher=spec.teacher), spec.run, what="run")
    return run_cfg, build_method(run_cfg, spec.set)[1]


def test_fuzz_the_config_and_cli_layer(tmp_path):
    rng, tally, start = random.Random(SEED), Tally(), time.perf_counter()
    for _ in range(3000):  # command lines: --field=text, --set key=text
        method = _method(rng)
        argv = ["run", f"--method={method}"] + [f"--{k.replace('_', '-')}={v}" if isinstance(k, str) else f"--x={v}"
                                                for k, v in _draw(RunConfig, rng, typed=False).items()
                                                if k in {f.name for f in cfgs.fields(RunConfig)}]
        if method in METHODS and rng.random() < 0.7:
            argv += [f"--set={k}={v}" for k, v in _draw(METHODS.get(method).Config, rng, typed=False).items()]
        tally.attempt(argv, lambda: _from_cli(argv))
    for i in range(1500):  # YAML configs, with set: for the method
        data = _draw(RunConfig, rng, typed=True)
        method = _method(rng)
        data["method"] = method
        if method in METHODS and rng.random() < 0.7:
            data["set"] = _draw(METHODS.get(method).Config, rng, typed=True)
        elif rng.random() < 0.05:
            data["set"] = rng.choice(JUNK_VALUES)
        tally.attempt(data, lambda: _from_yaml(tmp_path / f"c{i}.yaml", data))
    for i in range(500):  # sweep specs: run:, set: and a searched field
        method = rng.choice(METHOD_NAMES)
        cls = METHODS.get(method).Config
        field = rng.choice(cfgs.fields(cls))
        spec = {"method": method, "teacher": "gmm2d", "run": _draw(RunConfig, rng, typed=True),
                "space": {field.name: {"choice": [_valid(typing.get_type_hints(cls)[field.name], field, rng),
                                                  rng.choice(JUNK_VALUES)]}}}
        spec["run"].pop("method", None), spec["run"].pop("teacher", None)
        tally.attempt(spec, lambda: _from_sweep(tmp_path / f"s{i}.yaml", spec))
    seconds = time.perf_counter() - start
    print(f"\nfuzz: {tally.tried} inputs ({tally.accepted} accepted, {tally.tried - tally.accepted} rejected; "
          f"{tally.built} methods built on gmm2d) in {seconds:.1f} s; {len(tally.failures)} failures")
    assert tally.accepted > 200 and tally.tried - tally.accepted > 1000  # both sides are exercised
    assert not tally.failures, "\n".join(tally.failures[:10])


@pytest.mark.parametrize("cls", [RunConfig] + [METHODS.get(m).Config for m in METHOD_NAMES])
def test_defaults_round_trip(cls):
    default = cls()
    assert cfgs.from_params(cls, cfgs.to_params(default)) == default
    assert cfgs.replace(cls(), dataclasses.asdict(default)) == default
