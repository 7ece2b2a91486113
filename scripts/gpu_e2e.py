"""The steps of scripts/gpu_e2e.sh (issue 23: a real run on a GPU, end to end).

Run through scripts/gpu_e2e.sh, which unpacks the wheels and sets PYTHONPATH. Every step is a
``python -m bench ...`` process of its own (cwd: $WORK, one sqlite store for all), timed, with
its outcome appended to $OUT/e2e_summary.json as soon as it ends; a failed step never stops the
others. Output of every process goes to $OUT/e2e.log; training curves of the digits runs to
$OUT/e2e_curves.csv. Steps, in the order run (STEPS picks and orders them):

  a  BOOT on digits, bf16 then fp32 (ITERS steps): one-step FID[digits-cnn] at n = N_EVAL, curves
  b  the bf16 run again, kill -9 of its process group once its first checkpoint exists, then the
     same command with --resume: same MLflow run, finished, FID against a's uninterrupted run
  d  a random-weight cifar10-architecture teacher (diffusers save_pretrained) and a random
     InceptionV3 weights file: boot (bf16), progressive (bf16, one round) and ddim, a few
     steps each, KID on a few samples (numbers meaningless: ok + time)
  c  BOOT with compile=true: first steps' time (compilation) against later steps', and the
     compiled CUDA-graph one-step sampler's s/image against a's eager one
  e  bench sweep with resources {gpu: 0.5}, only where ray is importable

Env: DEVICE (cuda), OUT (e2e_out), WORK (/tmp/distill_bench_e2e; wiped at the start),
QUICK=1 (tiny CPU rehearsal), ITERS (1000; QUICK 20), N_EVAL (1000; QUICK 100),
BUDGET (seconds for the whole script, 300), E2E_START (epoch seconds the script started),
CAP_SCALE (multiplies each step's own time cap; 1, QUICK 6), STEPS (which steps, in this
order: "a b d c e").
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

from e2e_harness import (  # noqa: E402  (scripts/ is this script's sys.path[0])
    BUDGET, CURVES, DEVICE, ITERS, LOG, N_EVAL, OUT, PY, QUICK, RAY_WHEEL_MIB, START, STEPS, STORE, SUMMARY, WORK, _stopped, bench_args, cap, enough, facts, history, kill_group, outcome, output_since, record, remaining, run, run_args, say, spawn, summary)


# -- steps ---------------------------------------------------------------------------------
def digits_boot(*sets: str) -> list[str]:
    args = ["--method", "boot", "--teacher", "digits", "--nfe", "1", "--num-samples", str(N_EVAL),
            "--set", f"iterations={ITERS}"]
    if QUICK:  # quick FID and checkpoints inside the few steps; small batches; a cheaper fidelity anchor
        args += ["--set", "eval_every=10", "--set", "checkpoint_every=5", "--set", "batch_size=8",
                 "--fidelity-steps", "8"]
    for s in sets:
        args += ["--set", s]
    return args


def step_a() -> dict:
    """bf16 and fp32 BOOT on digits."""
    runs = {}
    for prec in ("bf16", "fp32"):
        name = f"a_boot_digits_{prec}"
        if not enough(name, 30):
            continue
        res = run(run_args("e2e-precision", *digits_boot(f"precision={prec}")), name, cap(120))
        detail = facts(res["run_id"], f"a_{prec}") if res["run_id"] else {}
        record(name, outcome(res), res["seconds"], run_id=res["run_id"], rc=res["rc"],
               timed_out=res["timed_out"], **detail, tail=res["tail"])
        runs[prec] = {**detail, "run_id": res["run_id"], "ok": outcome(res) == "ok"}
    if "bf16" in runs and "fp32" in runs and runs["bf16"]["ok"] and runs["fp32"]["ok"]:
        b, f = runs["bf16"], runs["fp32"]
        summary["bf16_vs_fp32"] = {k: {"bf16": b.get(k), "fp32": f.get(k)}
                                   for k in ("fid", "kid", "teacher_psnr", "loss_last10_mean", "train_seconds",
                                             "train_images_per_second_median", "sample_seconds_per_image")}
        say(f"[e2e] bf16 vs fp32: {json.dumps(summary['bf16_vs_fp32'])}")
    return runs


def step_b(reference: dict | None) -> None:
    """kill -9 after the first checkpoint, then --resume into the same MLflow run."""
    name = "b_kill9_resume"
    if not enough(name, 45):
        return
    start = time.time()
    cmd = run_args("e2e-resume", *digits_boot("precision=bf16"))
    before = set((WORK / "checkpoints").glob("*"))
    proc, offset = spawn(cmd, f"{name} (to be killed)")
    workdir = ckpt = None
    limit = time.time() + cap(90)
    while time.time() < limit and proc.poll() is None:
        new = [d for d in (WORK / "checkpoints").glob("*") if d not in before and d.is_dir()]
        found = sorted(p for d in new for p in d.glob("checkpoint_*.pt"))
        if found:
            workdir, ckpt = found[0].parent, found[0]
            break
        time.sleep(0.1)
    if ckpt is None:
        exited = proc.poll()
        kill_group(proc)
        record(name, "FAIL", time.time() - start, reason="no checkpoint appeared before the process "
               + ("exited" if exited is not None else "hit the time limit"), rc=exited,
               tail="\n".join(output_since(offset).strip().splitlines()[-15:]))
        return
    time.sleep(0.3)  # a few more steps, lost with the kill and redone after the resume
    kill_group(proc)
    killed_after = round(time.time() - start, 1)
    killed_id = workdir.name
    status_after_kill = facts(killed_id).get("mlflow_status")
    say(f"[e2e] {name}: killed (SIGKILL to the process group) after {killed_after} s with {ckpt.name}; "
        f"MLflow run {killed_id} is {status_after_kill}")
    res = run(cmd + ["--resume"], f"{name} (resume)", cap(120))
    resumed_from = re.findall(r"resuming MLflow run ([0-9a-f]{32}) from (.+)", res["text"])
    detail = facts(res["run_id"], "b_resumed") if res["run_id"] else {}
    same = res["run_id"] == killed_id
    ok = (outcome(res) == "ok" and same and detail.get("mlflow_status") == "FINISHED"
          and status_after_kill == "RUNNING" and int(detail.get("train_iterations", -1)) == ITERS)
    extra = {}
    if reference and reference.get("fid") is not None and detail.get("fid") is not None:
        extra = {"fid_uninterrupted_a_bf16": reference["fid"],
                 "fid_difference": round(detail["fid"] - reference["fid"], 6),
                 "loss_last10_uninterrupted": reference.get("loss_last10_mean")}
    record(name, "ok" if ok else "FAIL", time.time() - start, killed_run_id=killed_id,
           killed_after_s=killed_after, first_checkpoint=ckpt.name, status_after_kill=status_after_kill,
           resume_message=resumed_from[0] if resumed_from else None, resumed_run_id=res["run_id"],
           same_run=same, rc=res["rc"], timed_out=res["timed_out"], **detail, **extra, tail=res["tail"])


PREPARE = """
import sys, torch
from pathlib import Path
out, quick = Path(sys.argv[1]), sys.argv[2] == "1"
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
torch.manual_seed(0)
if quick:  # the code path only: a tiny 3-channel UNet (the real one takes minutes per step on a CPU)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
else:
    from perf.models import make_unet
    unet = make_unet("cifar10")
sched = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                      prediction_type="epsilon", clip_sample=True)
DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(out / "cifar10_random")
print("teacher:", sum(p.numel() for p in unet.parameters()) / 1e6, "M parameters")
# torch-fidelity's InceptionV3 with random weights, saved as its weights file would be
import torch_fidelity.feature_extractor_inceptionv3 as fx
from bench.features import INCEPTION_FILE
load, fx.load_state_dict_from_url = fx.load_state_dict_from_url, lambda *a, **k: {}
lsd, fx.FeatureExtractorInceptionV3.load_state_dict = fx.FeatureExtractorInceptionV3.load_state_dict, lambda self, sd: None
net = fx.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
torch.save(net.state_dict(), out / INCEPTION_FILE)
print("inception (random weights):", out / INCEPTION_FILE)
"""


def step_d() -> None:
    """cifar10 architecture, random weights: boot, progressive, ddim on the device."""
    name = "d_prepare_cifar10_random"
    if not enough(name, 20):
        return
    res = run([PY, "-c", PREPARE, str(WORK), "1" if QUICK else "0"], name, cap(60))
    ok = res["rc"] == 0 and not res["timed_out"]
    record(name, "ok" if ok else "FAIL", res["seconds"], rc=res["rc"], timed_out=res["timed_out"], tail=res["tail"])
    if not ok:
        return
    from_inception = ["--teacher", "cifar10", "--teacher-path", str(WORK / "cifar10_random"),
                      "--inception-weights", str(WORK / "weights-inception-2015-12-05-6726825d.pth")]
    n = 8 if QUICK else 100
    evaluation = ["--metrics", "kid", "--num-samples", str(n), "--batch-size", str(n), "--reference-samples", str(n),
                  "--reference-steps", "4", "--fidelity-steps", "4", "--fidelity-samples", str(n // 2)]
    batch = "4" if QUICK else "32"
    runs = {
        "d_boot_cifar10_bf16": ["--method", "boot", "--nfe", "1", "--set", f"iterations={2 if QUICK else 20}",
                                "--set", f"batch_size={batch}", "--set", "precision=bf16", "--set", "eval_every=0"],
        "d_progressive_cifar10_bf16": ["--method", "progressive", "--nfe", "1,2", "--set", "start_steps=2",
                                       "--set", "end_steps=1", "--set", f"iterations={2 if QUICK else 10}",
                                       "--set", f"batch_size={batch}", "--set", "precision=bf16",
                                       "--set", "data=synthetic", "--set", f"synthetic_samples={n}",
                                       "--set", "synthetic_steps=4"],
        "d_ddim_cifar10": ["--method", "ddim", "--nfe", "1,2"],
    }
    for label, args in runs.items():
        if not enough(label, 20):
            continue
        res = run(run_args("e2e-cifar10", *from_inception, *evaluation, *args), label, cap(90))
        detail = facts(res["run_id"]) if res["run_id"] else {}
        detail = {k: v for k, v in detail.items() if k in ("mlflow_status", "kid", "train_seconds",
                                                             "train_images_per_second_median",
                                                             "sample_seconds_per_image", "train_iterations")}
        record(label, outcome(res), res["seconds"], run_id=res["run_id"], rc=res["rc"],
               timed_out=res["timed_out"], **detail, tail=res["tail"])


def step_c(eager: dict | None) -> None:
    """compile=true: the compiled student trains and samples; compile time from train/seconds."""
    name = "c_boot_digits_compile"
    if not enough(name, 60):
        return
    iters = 10 if QUICK else 100
    # no fidelity anchor: the compiled teacher would compile again for its sampling batch
    args = ["--method", "boot", "--teacher", "digits", "--nfe", "1", "--num-samples", str(N_EVAL),
            "--set", f"iterations={iters}", "--set", "compile=true", "--set", "log_every=1",
            "--set", "eval_every=0", "--set", "checkpoint_every=0", "--fidelity-steps", "0"]
    if QUICK:
        args += ["--set", "batch_size=8"]
    env = {"BENCH_COMPILE_BACKEND": os.environ.get("BENCH_COMPILE_BACKEND", "eager")} if QUICK else None
    res = run(run_args("e2e-compile", *args), name, cap(240), env)
    detail = facts(res["run_id"], "c_compile") if res["run_id"] else {}
    if res["run_id"]:
        secs = history(res["run_id"], "train/seconds")  # cumulative training seconds by step
        times = [b - a for (_, a), (_, b) in zip([(0, 0.0)] + secs, secs)]
        later = times[10:] or times[1:]
        if times and later:
            per_step = statistics.median(later)
            detail.update(first_steps_s=[round(t, 3) for t in times[:5]], later_step_median_s=round(per_step, 5),
                          compile_overhead_s=round(sum(times[:10]) - per_step * min(10, len(times)), 2))
        if eager and eager.get("sample_seconds_per_image"):
            detail["sample_seconds_per_image_eager_a_bf16"] = eager["sample_seconds_per_image"]
    detail.pop("train_fid", None)
    record(name, outcome(res), res["seconds"], run_id=res["run_id"], rc=res["rc"], timed_out=res["timed_out"],
           backend=(env or {}).get("BENCH_COMPILE_BACKEND", os.environ.get("BENCH_COMPILE_BACKEND", "inductor")),
           **detail, tail=res["tail"])


SPEC = """name: e2e-sweep
method: boot
teacher: digits
run: {{num_samples: {n}, metrics: [fid], fidelity_steps: 0, experiment: e2e-sweep, device: {device}}}
set: {{iterations: {iters}, eval_every: {grace}, eval_samples: 256, log_every: 10}}
metric: fid
nfe: 1
mode: min
space:
  lr: {{loguniform: [3.0e-5, 1.0e-3]}}
search: random
scheduler: {{type: asha, grace_period: {grace}, reduction_factor: 2}}
num_samples: 2
max_concurrent: 2
resources: {{cpu: 1, gpu: {gpu}}}
time_budget_s: {budget}
max_failures: 0
storage_path: {storage}
"""


def step_e() -> None:
    name = "e_sweep_gpu_0.5"
    probe = subprocess.run([PY, "-c", "import ray, optuna"], capture_output=True, text=True)
    if probe.returncode != 0:
        reason = (f"SKIP sweep: ray wheel {RAY_WHEEL_MIB} MiB exceeds the 64 MiB transfer limit "
                  f"(ray 2.60 cp312 is 79.3 MB; not importable here: "
                  f"{(probe.stderr.strip().splitlines() or ['?'])[-1]})")
        say(reason)
        record(name, "SKIP", 0.0, reason=reason)
        return
    if not enough(name, 90):
        return
    spec = WORK / "e2e_sweep.yaml"
    spec.write_text(SPEC.format(n=256 if QUICK else 1000, device=DEVICE, iters=20 if QUICK else 400,
                                grace=10 if QUICK else 100, gpu=0 if DEVICE == "cpu" else 0.5,
                                budget=int(max(30, remaining() - 40)), storage=WORK / "sweep_results"))
    res = run(bench_args("sweep", str(spec), "--tracking-uri", STORE, "--quiet"), name, cap(300),
              {"RAY_AUTH_MODE": "disabled"})
    ok = res["rc"] == 0 and not res["timed_out"] and "trials" in res["text"]
    lines = [ln for ln in res["text"].splitlines() if ln.startswith(("sweep ", "best ", "no trial"))]
    record(name, "ok" if ok else "FAIL", res["seconds"], rc=res["rc"], timed_out=res["timed_out"],
           result=lines, tail=res["tail"])


def environment() -> None:
    code = ("import torch, diffusers, mlflow, torch_fidelity, sqlalchemy, sys; "
            "print(sys.version.split()[0], torch.__version__, torch.cuda.is_available(), "
            "torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', diffusers.__version__, "
            "mlflow.__version__, torch_fidelity.__version__, sqlalchemy.__version__, mlflow.__file__)")
    res = run([PY, "-c", code], "environment", cap(60))
    fields = res["text"].strip().splitlines()[-1].split() if res["rc"] == 0 else []
    keys = ("python", "torch", "cuda", "gpu", "diffusers", "mlflow", "torch_fidelity", "sqlalchemy", "mlflow_from")
    if len(fields) >= len(keys):  # the GPU's name has spaces: the fields around it are fixed
        head, tail = fields[:3], fields[-5:]
        summary["environment"] = dict(zip(keys, head + [" ".join(fields[3:-5])] + tail))
    record("environment", "ok" if res["rc"] == 0 else "FAIL", res["seconds"], **summary.get("environment", {}),
           tail=res["tail"])


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _stopped)
    signal.signal(signal.SIGINT, _stopped)
    if WORK.exists() and (WORK / ".gpu_e2e").exists():
        shutil.rmtree(WORK)
    elif WORK.exists() and any(WORK.iterdir()):
        sys.exit(f"gpu_e2e: {WORK} exists and is not ours (no .gpu_e2e marker); set WORK to a new folder")
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / ".gpu_e2e").write_text("scratch folder of scripts/gpu_e2e.py: deleted by its next run\n")
    os.environ.setdefault("BENCH_CACHE", str(WORK / "cache"))
    say(f"[e2e] device {DEVICE}, ITERS {ITERS}, N_EVAL {N_EVAL}, QUICK {QUICK}, budget {BUDGET:.0f} s "
        f"({remaining():.0f} s left), work {WORK}, out {OUT}")
    environment()
    a: dict = {}
    for step in STEPS:
        if step == "a":
            a = step_a()
        elif step == "b":
            step_b(a.get("bf16"))
        elif step == "c":
            step_c(a.get("bf16"))
        elif step == "d":
            step_d()
        elif step == "e":
            step_e()
        else:
            record(f"unknown step {step!r}", "FAIL", 0.0, reason="STEPS takes a, b, c, d, e")
    summary["elapsed_s"] = round(time.time() - START, 1)
    SUMMARY.write_text(json.dumps(summary, indent=2, default=str))
    say("\n[e2e] summary (status, seconds, step):")
    for s in summary["steps"]:
        say(f"  {s['status']:<5} {s['seconds']:>7.1f}  {s['step']}")
    failed = [s["step"] for s in summary["steps"] if s["status"] == "FAIL"]
    say(f"[e2e] done in {summary['elapsed_s']:.0f} s; {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; "
        f"{SUMMARY.name}, {LOG.name}, {CURVES.name} in {OUT}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
