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


def test_flags_are_built_from_the_dataclass():
    """One declaration: every field is a flag with its help; values parse by the field's type;
    flags not given stay absent (a config file's value then stands)."""
    import argparse

    p = argparse.ArgumentParser()
    cfgs.add_flags(p, Demo)
    args = p.parse_args(["--lr", "3e-4", "--nfe", "1,2", "--use-ema", "true"])
    given = cfgs.flag_values(args, Demo)
    assert given == {"lr": "3e-4", "nfe": "1,2", "use_ema": "true"}
    assert cfgs.replace(Demo(), given) == Demo(lr=3e-4, nfe=(1, 2), use_ema=True)
    helps = {a.dest: a.help for a in p._actions}
    assert helps["iterations"] == "steps (default: 100)" and helps["path"] == "optional (default: None)"


def test_choices_are_declared_once():
    @dataclasses.dataclass(frozen=True)
    class Pick:
        mode: str = option("a", "mode", choices=("a", "b"))
        many: tuple[str, ...] = option(("a",), "several", choices=("a", "b"))

        def __post_init__(self):
            cfgs.check_choices(self)

    assert cfgs.replace(Pick(), {"mode": "b", "many": "a,b"}) == Pick("b", ("a", "b"))
    with pytest.raises(BenchError, match="mode must be one of a, b; got c"):
        cfgs.replace(Pick(), {"mode": "c"})
    with pytest.raises(BenchError, match="many must be among a, b; got a,z"):
        cfgs.replace(Pick(), {"many": "a,z"})
    assert cfgs.describe(Pick)[0][1] == "a|b"


def test_dry_run_prints_the_resolved_config_and_runs_nothing(tmp_path, monkeypatch, capsys):
    import json

    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["run", "--dry-run", "--method", "boot", "--nfe", "1", "--set", "lr=3e-4",
                 "--reference-steps", "8"]) == 0
    out = capsys.readouterr().out
    run_text, method_text = out.split("boot config:\n")
    run = json.loads(run_text.split("\n", 1)[1])
    assert run["nfe"] == [1] and run["reference_steps"] == 8 and run["method"] == "boot"
    assert json.loads(method_text)["lr"] == 3e-4
    assert not list(tmp_path.iterdir())  # no store, no checkpoints: nothing ran
    assert main(["run", "--dry-run", "--set", "nope=1"]) == 2
