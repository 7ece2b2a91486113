"""Reliability of spools (issue #15, row 6): a spool damaged by a kill or by hand never gives a
traceback. A torn last line (what a kill during a write leaves) is skipped with a warning; a
corrupt line elsewhere, a bad meta.json or progress file is one line naming the file; `bench
sync` with no argument syncs each spool on its own and sums up which succeeded."""
import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.spool import EVENTS, META, PROGRESS, SpooledRun, pending, read_events, sync

METRIC = {"kind": "metrics", "data": {"loss": 0.5}, "step": 1, "timestamp": 1000}
END = {"kind": "status", "data": "FINISHED", "timestamp": 2000}


@pytest.fixture
def store(tracking_uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    return client, client.create_experiment("spools")


def _spool(store, name: str, lines: str, meta=None, progress=None) -> tuple[Path, str]:
    """checkpoints/<name>/spool of a fresh MLflow run, with ``lines`` as its events.jsonl."""
    client, exp = store
    run_id = client.create_run(exp).info.run_id
    spool = Path("checkpoints") / name / "spool"
    spool.mkdir(parents=True)
    uri = client.tracking_uri
    (spool / META).write_text(meta if meta is not None else json.dumps({"uri": uri, "run_id": run_id}))
    (spool / EVENTS).write_text(lines)
    if progress is not None:
        (spool / PROGRESS).write_text(progress)
    return spool, run_id


def _lines(*events) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)


def _sync_one_line(capfd, spool, message):
    code = main(["sync", str(spool)])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("bench: error: "), err
    assert message in err[0], err
    return err[0]


@pytest.mark.parametrize("meta", ["{not json", '["a list"]', '{"uri": 1}', ""])
def test_bad_meta_json_is_one_line(store, capfd, meta):
    spool, _ = _spool(store, "m", _lines(METRIC), meta=meta)
    _sync_one_line(capfd, spool, f"{spool / META} is corrupt")


@pytest.mark.parametrize("progress", ["x1", "-1", "99"])
def test_bad_progress_file_is_one_line(store, capfd, progress):
    spool, _ = _spool(store, "p", _lines(METRIC, END), progress=progress)
    _sync_one_line(capfd, spool, f"{spool / PROGRESS} holds {progress!r}, not a count of synced events")


def test_torn_last_line_is_skipped_and_said(store, capfd):
    client, _ = store
    spool, run_id = _spool(store, "t", _lines(METRIC) + json.dumps(END)[:20])
    assert main(["sync", str(spool)]) == 0
    out, err = capfd.readouterr()
    assert "1 events synced" in out and "skipped its incomplete last line" in err, (out, err)
    assert client.get_run(run_id).data.metrics == {"loss": 0.5}
    assert pending(spool) == 0
    # a run that appends to this spool later starts on a line of its own
    tracker = SpooledRun(client, run_id, client.tracking_uri, spool.parent)
    tracker._append(END)
    events, torn = read_events(spool)
    assert not torn and [e["kind"] for e in events] == ["metrics", "status"]
    assert sync(spool) == 1 and client.get_run(run_id).info.status == "FINISHED"


def test_corrupt_middle_line_names_file_and_line_and_sends_nothing(store, capfd):
    client, _ = store
    spool, run_id = _spool(store, "c", _lines(METRIC) + "{garbage\n" + _lines(END))
    _sync_one_line(capfd, spool, f"{spool / EVENTS} line 2 is corrupt")
    assert client.get_run(run_id).data.metrics == {}  # every line is checked before any is sent
    bad_kind = {"kind": "nonsense", "data": 1}
    spool2, _ = _spool(store, "k", _lines(METRIC, bad_kind))
    _sync_one_line(capfd, spool2, "line 2 is corrupt (not an event of a known kind")


def test_sync_without_argument_syncs_every_spool_independently(store, capfd):
    client, _ = store
    _spool(store, "a_bad_progress", _lines(METRIC), progress="x1")
    _spool(store, "b_bad_meta", _lines(METRIC), meta="{")
    torn, torn_id = _spool(store, "c_torn", _lines(METRIC) + '{"kind": "sta')
    good, good_id = _spool(store, "d_good", _lines(METRIC, END))
    assert main(["sync"]) == 2
    out, err = capfd.readouterr()
    errors = err.strip().splitlines()
    assert len([e for e in errors if e.startswith("bench: error: ")]) == 2, err
    assert "synced 2 of 4 spools" in out and str(good) in out and str(torn) in out, out
    assert "failed: checkpoints/a_bad_progress/spool, checkpoints/b_bad_meta/spool" in out, out
    assert client.get_run(good_id).info.status == "FINISHED"
    assert client.get_run(torn_id).data.metrics == {"loss": 0.5}

