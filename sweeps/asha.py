"""ASHA that writes down whom it stops, so a sweep can tell an early stop from a trial cut by
the time budget (to Ray both are just 'terminated'). Imports Ray: load it lazily."""
from __future__ import annotations

from pathlib import Path

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

STOPPED = "stopped_by_scheduler.txt"  # trial ids, one a line, in the sweep folder


class RecordingASHA(ASHAScheduler):
    def __init__(self, record_dir: str, **kwargs):
        super().__init__(**kwargs)
        self.record_dir = record_dir  # a path, not a handle: the scheduler is pickled on resume

    def on_trial_result(self, tune_controller, trial, result):
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result.get("final") != 1:
            with open(Path(self.record_dir) / STOPPED, "a") as f:
                f.write(trial.trial_id + "\n")
        return action


def stopped_trials(record_dir: Path) -> set[str]:
    path = Path(record_dir) / STOPPED
    return set(path.read_text().split()) if path.is_file() else set()
