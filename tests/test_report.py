"""bench report: tables whose numbers are the runs' logged numbers, plots, HTML, a report run."""
import numpy as np
import pytest

from bench.cli import main


def _run(uri, *args):
    assert main(["run", "--teacher", "digits", "--num-samples", "64", "--batch-size", "64",
                 "--tracking-uri", uri, "--experiment", "rep", "--quiet", *args]) == 0


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import os

    tmp = tmp_path_factory.mktemp("store")
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        for seed in ("0", "1"):
            _run(uri, "--method", "ddim", "--nfe", "1,2", "--seed", seed)
        _run(uri, "--method", "boot", "--set", "iterations=2", "--set", "eval_every=1", "--set", "log_every=1")
        _run(uri, "--method", "progressive", "--set", "start_steps=2", "--set", "iterations=2")
        _run(uri, "--method", "solver", "--set", "scheduler=unipc", "--nfe", "2")
    finally:
        os.chdir(cwd)
    return uri, tmp


def test_table_numbers_are_the_logged_numbers(store, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from reports.report import build_report

    uri, _ = store
    tables = build_report("rep", tmp_path / "out", ("ddim", 2), uri)
    table = tables["digits"].set_index(["method", "NFE"])
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("rep").experiment_id],
                              filter_string="params.method = 'ddim'")
    fid1 = [next(m.value for m in client.get_metric_history(r.info.run_id, "fid") if m.step == 1) for r in runs]
    assert len(fid1) == 2
    mean, std = np.mean(fid1), np.std(fid1, ddof=1)
    assert table.loc[("ddim", 1), "FID ↓"] == f"{mean:.3f} ± {std:.3f}"
    assert table.loc[("ddim", 1), "seeds"] == 2
    assert table.loc[("ddim", 2), "speed-up vs ddim-2 ↑"] == "1.0x"
    (boot,) = client.search_runs([runs[0].info.experiment_id], filter_string="params.method = 'boot'")
    assert table.loc[("boot", 1), "FID ↓"] == f"{boot.data.metrics['fid']:.3f}"
    assert table.loc[("boot", 1), "teacher fwd ↓"] == f"{boot.data.metrics['teacher_forwards']:,.0f}"
    (unipc,) = client.search_runs([runs[0].info.experiment_id], filter_string="params.method = 'solver'")
    assert table.loc[("solver:unipc", 2), "FID ↓"] == f"{unipc.data.metrics['fid']:.3f}"  # a row per solver
    assert set(table.index) == {("ddim", 1), ("ddim", 2), ("boot", 1), ("progressive:real", 1), ("progressive:real", 2),
                                ("solver:unipc", 2)}
    out = tmp_path / "out"
    for name in ("digits.md", "digits.tex", "digits.csv", "report.html", "digits_fid_vs_nfe.png",
                 "digits_fid_vs_wallclock.png", "digits_fid_vs_cost.png"):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    assert all(r.info.run_id in html for r in runs) and "digits-cnn" in html
    for name in ("digits_train_fid_vs_seconds.png", "digits_train_fid_vs_teacher_forwards.png",
                 "grids/digits_boot_nfe1.png", "grids/digits_ddim_nfe2.png", "grids/digits_solver_unipc_nfe2.png"):
        assert (out / name).is_file() and f'src="{name}"' in html, name
    reports = client.search_runs([runs[0].info.experiment_id], filter_string="tags.`bench.report` = 'true'")
    assert len(reports) == 1 and client.list_artifacts(reports[0].info.run_id, "report")


def test_report_cli_and_errors(store, tmp_path, capsys):
    uri, _ = store
    assert main(["report", "--experiment", "rep", "--tracking-uri", uri, "--out", str(tmp_path / "r"),
                 "--format", "md", "--filter", "params.method = 'boot'"]) == 0
    assert "boot" in capsys.readouterr().out and (tmp_path / "r" / "digits.md").is_file()
    assert main(["report", "--experiment", "nope", "--tracking-uri", uri]) == 2
    assert "no MLflow experiment 'nope'; known:" in capsys.readouterr().err
    assert main(["report", "--experiment", "rep", "--tracking-uri", uri, "--format", "pdf"]) == 2
    assert "unknown report format(s) pdf" in capsys.readouterr().err


def test_pareto_front():
    from reports.plots import pareto_front

    assert pareto_front([(1, 65.0), (400, 0.6), (450, 0.7), (300, 5.0), (1, 70.0)]) == [(1, 65.0), (300, 5.0), (400, 0.6)]


SUBSETS = [("fid",), ("kid",), ("precision", "recall"), ("fid", "kid"), ("kid", "precision", "recall"),
           ("fid", "kid", "precision", "recall"), ()]


def _logged_run(client, exp, method, metrics, seed=0, old=False):
    """A finished run as `bench run` logs it, with only ``metrics`` per NFE; ``old``: as versions
    before the cost metrics' rename and the feature_extractor param logged it."""
    from mlflow.entities import Metric, Param

    run_id = client.create_run(exp).info.run_id
    params = {"method": method, "teacher": "t", "n": "100", "seed": str(seed)}
    if not old:
        params["feature_extractor"] = "points"
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    values = [Metric(m, 0.1 * (i + 1) + nfe, 0, nfe) for nfe in (1, 2) for i, m in enumerate(metrics)]
    values += [Metric("teacher_nfe" if old else "teacher_forwards", 1000.0, 0, 0)]
    values += [] if old else [Metric("sample_seconds_per_image", 0.01 * nfe, 0, nfe) for nfe in (1, 2)]
    client.log_batch(run_id, metrics=values)
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.mark.parametrize("metrics", SUBSETS, ids=lambda m: "+".join(m) or "none")
def test_every_combination_of_logged_metrics_renders(metrics, tmp_path):
    """Before: runs logged with --metrics kid crashed the report (KeyError 'fid_mean')."""
    from mlflow.tracking import MlflowClient

    from reports.report import build_report

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("mix")
    _logged_run(client, exp, "a", metrics)
    tables = build_report("mix", tmp_path / "out", ("a", 1), uri, log=False)
    table = tables["t"].set_index(["method", "NFE"])
    for name, key in (("FID ↓", "fid"), ("KID ↓", "kid"), ("precision ↑", "precision"), ("recall ↑", "recall")):
        cell = table.loc[("a", 2), name]
        assert (cell != "–") == (key in metrics), (name, cell)
    assert (tmp_path / "out" / "t.md").is_file() and (tmp_path / "out" / "report.html").is_file()


def test_runs_of_every_kind_in_one_experiment(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("mix")
    for i, metrics in enumerate(SUBSETS):
        _logged_run(client, exp, f"m{i}", metrics, seed=i)
        _logged_run(client, exp, f"m{i}", metrics, seed=i + 10)  # two seeds: mean ± std
    _logged_run(client, exp, "old", ("fid",), old=True)
    assert main(["report", "--experiment", "mix", "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "old" in out and "m6" in out
    md = (tmp_path / "r" / "t.md").read_text()
    assert "| old | 1 | 1.100 |" in md and "| m1 | 1 | – | 1.1000 ± 0.0000 |" in md, md


def test_report_of_a_real_kid_only_run_and_an_out_that_is_a_file(tracking_uri, tmp_path, capfd):
    assert main(["run", "--teacher", "gmm2d", "--nfe", "1,2", "--num-samples", "50", "--metrics", "kid",
                 "--tracking-uri", tracking_uri, "--quiet"]) == 0
    assert main(["report", "--tracking-uri", tracking_uri, "--out", str(tmp_path / "rep")]) == 0
    assert "ddim" in capfd.readouterr().out
    assert (tmp_path / "rep" / "gmm2d_kid_vs_nfe.png").is_file()  # KID, as no run has an FID
    (tmp_path / "afile").write_text("x")
    assert main(["report", "--tracking-uri", tracking_uri, "--out", str(tmp_path / "afile")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [f"bench: error: --out {tmp_path / 'afile'} is a file; give a folder for the report's files"]


def test_training_curves_are_interpolated_at_the_quick_fid_steps():
    """train/fid every eval_every steps, seconds every log_every: seconds read off at FID steps."""
    import pandas as pd

    from reports.curves import training_curves

    class Point:
        def __init__(self, step, value):
            self.step, self.value = step, value

    hist = {"train/fid": [Point(5, 9.0), Point(10, 4.0)], "train/seconds": [Point(0, 0.0), Point(10, 20.0)],
            "train/teacher_forwards": [Point(0, 0.0), Point(10, 640.0)]}

    class Client:
        def get_metric_history(self, run_id, key):
            return hist[key] if run_id == "a" else []

    runs = pd.DataFrame([{"run_id": "a", "teacher": "t", "method": "boot", "config": "c", "seed": 0},
                         {"run_id": "b", "teacher": "t", "method": "ddim", "config": "c", "seed": 0}])
    curves = training_curves(Client(), runs)
    assert curves[["method", "step", "fid", "seconds", "teacher_forwards"]].values.tolist() == [
        ["boot", 5.0, 9.0, 10.0, 320.0], ["boot", 10.0, 4.0, 20.0, 640.0]]
