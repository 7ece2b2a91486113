#!/usr/bin/env bash
# docs/results made on the GPU machine: scripts/results.sh there, its dependencies unpacked from
# wheels/ as scripts/gpu_e2e.sh does (the image has torch but not diffusers, mlflow or
# torch-fidelity). The runs stop after RUN_BUDGET seconds (runs cut short stay unfinished and
# out of the report); the MLflow store and the report land under OUT.
#
#   bash scripts/gpu_results.sh            # on the GPU machine, from the repo root
#
# Env: OUT (e2e_out/results), RUN_BUDGET (480), PYTHON (python3), DEPS_DIR (.gpu_deps).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEPS=${DEPS_DIR:-.gpu_deps}
OUT=${OUT:-e2e_out/results}
mkdir -p "$OUT" "$DEPS"
OUT=$(cd "$OUT" && pwd)
[ -d wheels ] && "$PY" scripts/install_wheels.py wheels "$DEPS"
"$PY" scripts/project_metadata.py "$DEPS"
DEPS=$(cd "$DEPS" && pwd)
export PYTHONPATH="$PWD:$DEPS${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true
export BENCH="$PY -m bench" STORE="sqlite:///$OUT/results.db"
start=$(date +%s)
OUT="$OUT/docs" timeout -k 5 "${RUN_BUDGET:-480}" bash scripts/results.sh
echo "gpu_results: runs ended (rc $?) after $(( $(date +%s) - start )) s"
OUT="$OUT/docs" REPORT_ONLY=1 bash scripts/results.sh
