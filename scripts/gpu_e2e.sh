#!/usr/bin/env bash
# Issue 23, a real run on a GPU, end to end: `bench run` (as `python -m bench`: nothing is
# installed) on the GPU machine, whose image has python with torch but not diffusers,
# torch-fidelity or mlflow (they come from wheels/: scripts/fetch_wheels.sh). Steps (details
# in scripts/gpu_e2e.py): a) BOOT on digits in bf16 and fp32, one-step FID and loss curves;
# b) kill -9 mid-run and --resume into the same MLflow run; d) a random-weight cifar10 teacher
# (save_pretrained) through boot, progressive and ddim; c) compile=true; e) the sweep, only
# where ray is importable (its wheel does not fit the transfer limit). Each step is timed and
# its outcome appended to the summary; a failure never stops the others. Whole script
# <= BUDGET seconds (300; steps that would not fit are skipped, SKIP in the summary).
#
#   bash scripts/gpu_e2e.sh                           # from the repo root, on the GPU machine
#   DEVICE=cpu QUICK=1 bash scripts/gpu_e2e.sh        # the same code path on a CPU, tiny
#
# Env: DEVICE (cuda), OUT (e2e_out: e2e.log, e2e_summary.json, e2e_curves.csv, nothing else),
# WHEELS (wheels), DEPS_DIR (.gpu_deps, git-ignored; never under OUT), WORK (scratch: MLflow
# store, checkpoints, teachers; /tmp/distill_bench_e2e, wiped at the start), ITERS (BOOT steps,
# 1000), N_EVAL (1000), BUDGET (300), STEPS ("a b d c e"), PYTHON (python3), QUICK=1.
# Exit status: 0 if no step failed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-wheels}
DEPS=${DEPS_DIR:-.gpu_deps}
export DEVICE=${DEVICE:-cuda} OUT=${OUT:-e2e_out} BUDGET=${BUDGET:-300}
export E2E_START=${E2E_START:-$(date +%s)}
mkdir -p "$OUT" "$DEPS"
OUT=$(cd "$OUT" && pwd)
say() { echo "$*" | tee -a "$OUT/e2e.log"; }
: >"$OUT/e2e.log"

# 1. dependencies: unpack from the wheels only what this python lacks (or has too old);
# the checkout's own metadata (entry points of `bench perf|report|sweep`) beside them
if [ -d "$WHEELS" ]; then
  "$PY" scripts/install_wheels.py "$WHEELS" "$DEPS" 2>&1 | tee -a "$OUT/e2e.log"
else
  say "gpu_e2e: no $WHEELS/ folder; using the packages this python has (run scripts/fetch_wheels.sh to bring them)"
fi
"$PY" scripts/project_metadata.py "$DEPS" 2>&1 | tee -a "$OUT/e2e.log"
DEPS=$(cd "$DEPS" && pwd)  # absolute: the steps run in another working directory
export PYTHONPATH="$PWD:$DEPS${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 \
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false RAY_AUTH_MODE=disabled
say "gpu_e2e: wheels ready after $(( $(date +%s) - E2E_START )) s"

# 2. the steps; the hard stop is a backstop only (each step has its own limit inside BUDGET)
left=$(( BUDGET - ($(date +%s) - E2E_START) + 15 ))
timeout -k 5 "$(( left > 30 ? left : 30 ))" "$PY" scripts/gpu_e2e.py
rc=$?
[ $rc -eq 124 ] || [ $rc -eq 137 ] && say "gpu_e2e: stopped by the ${BUDGET}s budget backstop; $OUT/e2e_summary.json has the steps that ended"
exit $rc
