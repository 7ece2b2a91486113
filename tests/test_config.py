import dataclasses
from typing import Optional

import pytest

from bench import config as cfgs
from bench.config import option
from bench.errors import BenchError


@dataclasses.dataclass(frozen=True)
class Demo:
    lr: float = option(1e-4, "learning rate")
    iterations: int = option(100, "steps")
    use_ema: bool = option(False, "EMA")
    nfe: tuple[int, ...] = option((1, 2, 4), "steps")
    name: str = option("x", "a name")
    path: Optional[str] = option(None, "optional")


def test_params_round_trip():
    c = Demo(lr=3e-5, iterations=7, use_ema=True, nfe=(1, 8), name="y", path="/tmp/a")
    params = cfgs.to_params(c, "method.")
    assert params["method.lr"] == "3e-05" and params["method.nfe"] == "1,8"
    assert cfgs.from_params(Demo, params, "method.") == c
    assert cfgs.from_params(Demo, cfgs.to_params(Demo())) == Demo()


def test_describe_has_help():
    rows = {r[0]: r for r in cfgs.describe(Demo)}
    assert rows["lr"][1:] == ("float", "0.0001", "learning rate")


def test_replace_parses_strings():
    c = cfgs.replace(Demo(), cfgs.parse_sets(["lr=1e-3", "iterations=200", "use_ema=yes", "nfe=1,2"]))
    assert (c.lr, c.iterations, c.use_ema, c.nfe) == (1e-3, 200, True, (1, 2))


@pytest.mark.parametrize("pairs, match", [
    (["nope=1"], "unknown config field 'nope'; known: "),
    (["lr=fast"], "bad value for config field 'lr'"),
    (["use_ema=maybe"], "bad value for config field 'use_ema'"),
])
def test_replace_errors(pairs, match):
    with pytest.raises(BenchError, match=match):
        cfgs.replace(Demo(), cfgs.parse_sets(pairs))


def test_parse_sets_needs_equals():
    with pytest.raises(BenchError, match="use --set key=value"):
        cfgs.parse_sets(["lr"])


def test_load_yaml_errors(tmp_path):
    with pytest.raises(BenchError, match="cannot read config"):
        cfgs.load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(BenchError, match="not valid YAML"):
        cfgs.load_yaml(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(BenchError, match="must be a mapping"):
        cfgs.load_yaml(lst)
