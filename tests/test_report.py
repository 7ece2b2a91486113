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
        _run(uri, "--method", "boot", "--set", "iterations=2", "--set", "eval_every=0")
        _run(uri, "--method", "progressive", "--set", "start_steps=2", "--set", "iterations=2")
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
    assert set(table.index) == {("ddim", 1), ("ddim", 2), ("boot", 1), ("progressive", 1), ("progressive", 2)}
    out = tmp_path / "out"
    for name in ("digits.md", "digits.tex", "digits.csv", "report.html", "digits_fid_vs_nfe.png",
                 "digits_fid_vs_wallclock.png", "digits_fid_vs_cost.png"):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    assert all(r.info.run_id in html for r in runs) and "digits-cnn" in html
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
