#!/usr/bin/env bash
# The README's result tables, regenerated: DDIM, the training-free solvers, BOOT, progressive and
# consistency distillation, DMD2 and SiD on the embedded digits teacher with their default configs, one MLflow experiment,
# then `bench report` writes the tables and plots into docs/results/ (nothing is copied by hand).
# About 100 min on a quiet 2-core CPU (BOOT 3,000 steps ~9 min, each PD run 5-8 min, each CD run
# ~10-15 min, DMD2 and SiD ~10 min each, solvers ~2 min each); scripts/gpu_results.sh runs it on a GPU machine.
#
#   bash scripts/results.sh                       # from the repo root
#   STORE=sqlite:////tmp/r.db N=1000 bash scripts/results.sh
#
# Env: STORE (sqlite:///./results.db), EXPERIMENT (results-digits), N (samples, 1000),
# OUT (docs/results), BENCH (.venv/bin/bench), REPORT_ONLY=1 (skip the runs).
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${STORE:-sqlite:///./results.db}
EXPERIMENT=${EXPERIMENT:-results-digits}
N=${N:-1000}
OUT=${OUT:-docs/results}
BENCH=${BENCH:-.venv/bin/bench}  # a command: words allowed (python3 -m bench)
export HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true
common=(--teacher digits --num-samples "$N" --seed 0 --quiet --experiment "$EXPERIMENT" --tracking-uri "$STORE")

if [ "${REPORT_ONLY:-0}" != 1 ]; then
  $BENCH run --method ddim --nfe 1,2,3,4,5,6,8,10,16,32,64 "${common[@]}"
  # the training-free frontier at NFE 2..16; each solver at the NFEs it can spend exactly
  grid=2,3,4,5,6,8,10,16
  for solver in euler dpmsolver++ dpmsolver++:3 dpmsolver++_singlestep unipc deis lms ipndm; do
    order=(); [[ $solver == *:* ]] && order=(--set "solver_order=${solver#*:}")
    $BENCH run --method solver --set "scheduler=${solver%%:*}" "${order[@]}" --nfe "$grid" "${common[@]}"
  done
  $BENCH run --method solver --set scheduler=heun --nfe 3,5 "${common[@]}"  # 2 calls a step
  $BENCH run --method solver --set scheduler=pndm --nfe 3,4,5,6,8,10,16 "${common[@]}"  # +1 warm start
  $BENCH run --method boot --nfe 1 "${common[@]}"
  $BENCH run --method progressive --set data=real "${common[@]}"
  $BENCH run --method progressive --set data=synthetic "${common[@]}"
  $BENCH run --method consistency --set data=real "${common[@]}"
  $BENCH run --method consistency --set data=synthetic "${common[@]}"
  $BENCH run --method dmd2 "${common[@]}"  # data-free, like BOOT
  $BENCH run --method sid "${common[@]}"
fi
rm -rf "$OUT"
$BENCH report --experiment "$EXPERIMENT" --tracking-uri "$STORE" --out "$OUT" --format md,csv \
  --baseline-method ddim --baseline-steps 64
echo "results: tables and plots in $OUT/"
