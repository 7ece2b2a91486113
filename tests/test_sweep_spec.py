"""Sweep specs: validation errors name the key and its line; spaces map onto Ray Tune domains."""
from pathlib import Path

import pytest

from bench.errors import BenchError
from sweeps.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
GOOD = """\
name: t
method: boot
teacher: gaussian
set: {iterations: 50}
space:
  lr: {loguniform: [1.0e-5, 1.0e-3]}
  delta: {choice: [5, 10]}
"""


def _spec(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, expected", [
    (GOOD.replace("space:\n  lr: {loguniform: [1.0e-5, 1.0e-3]}\n  delta: {choice: [5, 10]}\n", "space: {}\n"),
     "line 5: space: the search space is empty"),
    (GOOD.replace("loguniform: [1.0e-5, 1.0e-3]", "lognormal: [1, 2]"), "line 6: space.lr.lognormal: unknown distribution"),
    (GOOD.replace("[1.0e-5, 1.0e-3]", "[1.0e-3, 1.0e-5]"), "line 6: space.lr.loguniform: needs [low, high]"),
    (GOOD.replace("[1.0e-5, 1.0e-3]", "[0, 1.0e-3]"), "needs 0 < low"),
    (GOOD.replace("choice: [5, 10]", "choice: []"), "line 7: space.delta.choice: needs a non-empty list"),
    (GOOD.replace("  delta:", "  deltaa:"), "line 7: space.deltaa: unknown boot config field 'deltaa'"),
    (GOOD.replace("choice: [5, 10]", "choice: [5, ten]"), "space.delta: bad value for boot config field 'delta'"),
    (GOOD + "metrc: fid\n", "line 8: metrc: unknown key"),
    (GOOD + "mode: minimum\n", "line 8: mode: must be min or max"),
    (GOOD + "search: bayes\n", "line 8: search: must be one of optuna, random, grid"),
    (GOOD + "search: grid\n", "grid search needs every space entry to be a choice list"),
    (GOOD + "scheduler: {type: hyperband}\n", "line 8: scheduler.type: must be asha or none"),
    (GOOD + "num_samples: 0\n", "line 8: num_samples: must be a positive integer"),
    (GOOD + "time_budget_s: -5\n", "time_budget_s: must be a positive number"),
    (GOOD.replace("iterations: 50", "lr: 0.1"), "space.lr: is both searched and fixed"),
    (GOOD.replace("teacher: gaussian", "teacher: gaussian\nrun: {num_sampels: 3}"), "line 4: run: unknown run field"),
    (GOOD.replace("method: boot", "method: bot"), "unknown method 'bot'"),
    (GOOD + "space: [\n", "is not valid YAML"),
    ("- a\n- b\n", "must be a mapping"),
])
def test_bad_specs_fail_with_one_line_naming_the_key(tmp_path, text, expected):
    with pytest.raises(BenchError) as err:
        load_spec(_spec(tmp_path, text))
    message = str(err.value)
    assert expected in message and "\n" not in message, message


def test_yaml_is_safe_loaded(tmp_path):
    """A spec cannot construct Python objects."""
    with pytest.raises(BenchError, match="not valid YAML"):
        load_spec(_spec(tmp_path, GOOD + "seed: !!python/object/apply:os.system ['true']\n"))


def test_cli_empty_space_is_one_line_and_exit_2(tmp_path, capsys):
    from bench.cli import main

    path = _spec(tmp_path, "method: boot\nteacher: gaussian\nspace: {}\n")
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench: error: sweep spec") and "space is empty" in err and "\n" not in err


def test_space_maps_onto_ray_tune_domains(tmp_path):
    from ray import tune

    from sweeps.driver import param_space

    spec = load_spec(_spec(tmp_path, GOOD.replace("  delta: {choice: [5, 10]}",
                                                   "  delta: {choice: [5, 10]}\n  warmup: {randint: [0, 10]}")))
    space = param_space(spec)
    assert isinstance(space["lr"], tune.search.sample.Float) and space["lr"].lower == 1e-5
    assert isinstance(space["lr"].get_sampler(), tune.search.sample.LogUniform)
    assert space["delta"].categories == [5, 10]
    assert isinstance(space["warmup"], tune.search.sample.Integer) and space["warmup"].upper == 10
    grid = load_spec(_spec(tmp_path, GOOD.replace("lr: {loguniform: [1.0e-5, 1.0e-3]}",
                                                  "lr: {choice: [1.0e-4, 1.0e-3]}") + "search: grid\n"))
    assert param_space(grid)["lr"] == {"grid_search": [1e-4, 1e-3]}


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "sweeps").glob("*.yaml")))
def test_shipped_specs_are_valid(name):
    spec = load_spec(ROOT / "sweeps" / name)
    assert spec.space and spec.method and spec.teacher
