"""The harness of scripts/gpu_e2e.py: its settings (from the environment), the log and the
summary it writes as it goes, child processes in their own groups under a time budget, and
what a finished run left in MLflow. The steps themselves are in gpu_e2e.py."""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICK = os.environ.get("QUICK", "0") == "1"
DEVICE = os.environ.get("DEVICE", "cuda")
OUT = Path(os.environ.get("OUT", "e2e_out")).resolve()
WORK = Path(os.environ.get("WORK", "/tmp/distill_bench_e2e")).resolve()
ITERS = int(os.environ.get("ITERS", 20 if QUICK else 1000))
N_EVAL = int(os.environ.get("N_EVAL", 100 if QUICK else 1000))
BUDGET = float(os.environ.get("BUDGET", 300))
START = float(os.environ.get("E2E_START", time.time()))
DEADLINE = START + BUDGET
PY = sys.executable
STEPS = os.environ.get("STEPS", "a b d c e").split()
CAP_SCALE = float(os.environ.get("CAP_SCALE", 6 if QUICK else 1))  # a (loaded) CPU is far slower
STORE = f"sqlite:///{WORK / 'mlflow.db'}"
RAY_WHEEL_MIB = 75.6  # ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl: 79,321,593 bytes
LOG = OUT / "e2e.log"
SUMMARY = OUT / "e2e_summary.json"
CURVES = OUT / "e2e_curves.csv"
RUN_ID = re.compile(r"MLflow run ([0-9a-f]{32})")

summary: dict = {"device": DEVICE, "quick": QUICK, "iters": ITERS, "n_eval": N_EVAL, "budget_s": BUDGET,
                 "steps": []}
curves: list[tuple] = []  # (label, run_id, metric, step, value)
LIVE: set = set()  # child processes running now (each in its own process group)


# -- output ------------------------------------------------------------------------------
def say(line: str) -> None:
    """A line to the console and the log."""
    print(line, flush=True)
    with open(LOG, "a") as fh:
        fh.write(line + "\n")


def record(step: str, status: str, seconds: float, **detail) -> dict:
    entry = {"step": step, "status": status, "seconds": round(seconds, 1), **detail}
    summary["steps"].append(entry)
    summary["elapsed_s"] = round(time.time() - START, 1)
    SUMMARY.write_text(json.dumps(summary, indent=2, default=str))
    shown = {k: v for k, v in detail.items() if k not in ("tail", "cmd")}
    say(f"[e2e] {step}: {status} in {seconds:.1f} s {json.dumps(shown, default=str)}")
    if status == "FAIL" and detail.get("tail"):
        say("[e2e]   last output:\n" + "\n".join("    " + ln for ln in detail["tail"].splitlines()))
    return entry


def write_curves() -> None:
    with open(CURVES, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "run_id", "metric", "step", "value"])
        w.writerows(curves)


def remaining() -> float:
    return DEADLINE - time.time()


# -- processes ---------------------------------------------------------------------------
def bench_args(*args: str) -> list[str]:
    return [PY, "-m", "bench", *args]


def run_args(experiment: str, *args: str) -> list[str]:
    return bench_args("run", "--device", DEVICE, "--tracking-uri", STORE, "--experiment", experiment,
                      "--quiet", *args)


def spawn(cmd: list[str], label: str, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    """Start ``cmd`` in its own process group, its output appended to the log."""
    with open(LOG, "a") as fh:
        fh.write(f"\n===== {label}: {' '.join(cmd)}\n")
        offset = fh.tell()
    log = open(LOG, "a")
    proc = subprocess.Popen(cmd, cwd=WORK, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    log.close()
    LIVE.add(proc)
    return proc, offset


def output_since(offset: int) -> str:
    with open(LOG, "rb") as fh:
        fh.seek(offset)
        return fh.read().decode("utf-8", "replace")


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    LIVE.discard(proc)


def _stopped(signum, frame) -> None:
    """SIGTERM (the script's backstop timeout) or Ctrl-C: children live in process groups of
    their own, so they are killed here, or they would hold the GPU after this script ends."""
    for proc in list(LIVE):  # no proc.wait() here: the interrupted main thread may hold its lock
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    say(f"[e2e] stopped by signal {signum} after {time.time() - START:.0f} s; children killed")
    summary["stopped_by_signal"] = signum
    SUMMARY.write_text(json.dumps(summary, indent=2, default=str))
    os._exit(128 + signum)


def run(cmd: list[str], label: str, timeout: float, env: dict | None = None) -> dict:
    """Run to the end or ``timeout`` (then its whole process group is killed)."""
    start = time.time()
    proc, offset = spawn(cmd, label, env)
    try:
        rc = proc.wait(timeout=max(timeout, 1))
        LIVE.discard(proc)
        timed_out = False
    except subprocess.TimeoutExpired:
        kill_group(proc)
        rc, timed_out = proc.returncode, True
    text = output_since(offset)
    ids = RUN_ID.findall(text)
    return {"rc": rc, "timed_out": timed_out, "seconds": time.time() - start, "text": text,
            "run_id": ids[-1] if ids else None, "tail": "\n".join(text.strip().splitlines()[-15:])}


def cap(seconds: float) -> float:
    """A step's time limit: its own cap (times CAP_SCALE), or what is left of the budget (5 s kept back)."""
    return min(seconds * CAP_SCALE, remaining() - 5)


def enough(step: str, needed: float) -> bool:
    if remaining() - 5 >= needed:
        return True
    record(step, "SKIP", 0.0, reason=f"budget: {remaining():.0f} s left of {BUDGET:.0f} s, step needs ~{needed:.0f} s")
    return False


def outcome(res: dict) -> str:
    return "ok" if res["rc"] == 0 and not res["timed_out"] and res["run_id"] else "FAIL"


# -- MLflow --------------------------------------------------------------------------------
_client = None


def client():
    global _client
    if _client is None:
        from mlflow.tracking import MlflowClient

        _client = MlflowClient(STORE)
    return _client


def history(run_id: str, key: str) -> list[tuple[int, float]]:
    """A metric's (step, value) pairs by step; [] if the store cannot say (never an exception)."""
    try:
        found = client().get_metric_history(run_id, key)
    except Exception as exc:
        say(f"[e2e] MLflow: no history of {key} for run {run_id}: {type(exc).__name__}: {str(exc)[:200]}")
        return []
    return [(m.step, m.value) for m in sorted(found, key=lambda m: (m.step, m.timestamp))]


def facts(run_id: str, label: str | None = None) -> dict:
    """The run's status and headline metrics; with ``label``, its curves go to the CSV."""
    try:
        r = client().get_run(run_id)
    except Exception as exc:  # a broken store (or a missing mlflow) must not stop the script
        return {"mlflow_error": f"{type(exc).__name__}: {exc}"[:300]}
    m = r.data.metrics
    out = {"mlflow_status": r.info.status}
    for key in ("fid", "kid", "teacher_psnr", "sample_seconds_per_image", "sample_images_per_second",
                "train_seconds", "distill_seconds", "train_iterations", "teacher_forwards"):
        if key in m:
            out[key] = round(m[key], 6) if isinstance(m[key], float) else m[key]
    loss = history(run_id, "train/loss")
    if loss:
        tail = [v for _, v in loss[-10:]]
        out["loss_last10_mean"] = round(statistics.fmean(tail), 6)
        out["loss_logged_steps"] = f"{loss[0][0]}..{loss[-1][0]} ({len(loss)} points)"
    ips = [v for _, v in history(run_id, "train/images_per_second")]
    if ips:
        out["train_images_per_second_median"] = round(statistics.median(ips), 1)
    fids = history(run_id, "train/fid")
    if fids:
        out["train_fid"] = [(s, round(v, 4)) for s, v in fids]
    if label:
        for key in ("train/loss", "train/seconds", "train/fid"):
            curves.extend((label, run_id, key, s, v) for s, v in history(run_id, key))
        write_curves()
    return out
