#!/usr/bin/env bash
# Issue #19's figures on the class-conditional digits teacher (digits_cond): DDIM at NFE 1..64
# and one-step BOOT and DMD2 at guidance w in {1, 2, 4}, FID[digits-cnn] (n = 1000, labels i mod 10)
# and class accuracy, one MLflow experiment, then `bench report` into docs/results_cond/.
# About 60 min on a quiet 2-core CPU (a guided BOOT run costs two teacher forwards a row).
#
#   bash scripts/results_cond.sh
#   STORE=sqlite:////tmp/c.db bash scripts/results_cond.sh
#
# Env: STORE (sqlite:///./results.db), EXPERIMENT (results-digits-cond), N (1000),
# OUT (docs/results_cond), BENCH (.venv/bin/bench), WS ("1 2 4"), REPORT_ONLY=1 (skip the runs).
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${STORE:-sqlite:///./results.db}
EXPERIMENT=${EXPERIMENT:-results-digits-cond}
N=${N:-1000}
OUT=${OUT:-docs/results_cond}
BENCH=${BENCH:-.venv/bin/bench}
WS=${WS:-1 2 4}
export HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true
common=(--teacher digits_cond --num-samples "$N" --seed 0 --quiet --experiment "$EXPERIMENT" --tracking-uri "$STORE")

if [ "${REPORT_ONLY:-0}" != 1 ]; then
  for w in $WS; do
    $BENCH run --method ddim --guidance-scale "$w" --nfe 1,2,4,8,16,32,64 "${common[@]}"
  done
  for w in $WS; do
    $BENCH run --method boot --guidance-scale "$w" --nfe 1 "${common[@]}"
    $BENCH run --method dmd2 --guidance-scale "$w" "${common[@]}"
  done
fi
rm -rf "$OUT"
$BENCH report --experiment "$EXPERIMENT" --tracking-uri "$STORE" --out "$OUT" --format md,csv \
  --baseline-method ddim --baseline-steps 64
echo "results: tables and plots in $OUT/"
