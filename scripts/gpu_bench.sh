#!/usr/bin/env bash
# `bench perf` (as `python -m perf`: nothing is installed) on a GPU machine: the cifar10 and
# lsun_bedroom UNet architectures (random weights: throughput only, labelled so), one table at
# the end; about 4-5 minutes on an H100.
# The image needs only python with torch; the rest comes from wheels/ (scripts/fetch_wheels.sh).
#
#   bash scripts/gpu_bench.sh                    # from the repo root; tables in perf_out/
#   DEVICE=cpu ARCHS=digits QUICK=1 bash scripts/gpu_bench.sh   # the same code path on a CPU
#
# Env: DEVICE (cuda), ARCHS ("cifar10 lsun_bedroom"), WHEELS (wheels), OUT (perf_out),
# DEPS_DIR (.gpu_deps, git-ignored: where the wheels are unpacked; keep it out of a device
# call's $OUT, whose files come back, 8 at most),
# COMPILE (sampler; "all" also compiles training: +2-3 min per arch), ARCH_TIMEOUT (s, 170),
# PYTHON (python3), QUICK=1 (tiny settings: checks the path, figures meaningless).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
ARCHS=${ARCHS:-"cifar10 lsun_bedroom"}
WHEELS=${WHEELS:-wheels}
OUT=${OUT:-perf_out}
DEPS=${DEPS_DIR:-.gpu_deps}
COMPILE=${COMPILE:-sampler}
mkdir -p "$OUT"
start=$SECONDS

# 1. dependencies: unpack from the wheels only what this python cannot import already
if [ -d "$WHEELS" ]; then
  mkdir -p "$DEPS"
  "$PY" scripts/install_wheels.py "$WHEELS" "$DEPS"
  DEPS=$(cd "$DEPS" && pwd)  # absolute: PYTHONPATH must not depend on the working directory
  export PYTHONPATH="$PWD:$DEPS${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "gpu_bench: no $WHEELS/ folder; using the packages this python has (run scripts/fetch_wheels.sh to bring them)"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true TOKENIZERS_PARALLELISM=false
"$PY" -c "import torch, diffusers, torch_fidelity; print('gpu_bench: torch', torch.__version__, \
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"

# 2. one `bench perf` per architecture. Settings are sized for < 5 min in all on an H100:
# eager training (torch.compile of training costs ~160 s per arch, COMPILE=all), the compiled
# one-step sampler, channels_last measured both ways (it was slower for the bedroom UNet),
# gradient checkpointing both ways at bedroom size (the 40 GB budget at batch 32).
args_for() {
  case $1 in
    cifar10) echo "--arch cifar10 --batch-size 256 --steps 10 --blocks 3 --sample-batch-size 1024
                   --nfe 1,50 --repeats 5 --channels-last both --sections train,sample,eval";;
    lsun_bedroom) echo "--arch lsun_bedroom --batch-size 32 --steps 4 --blocks 2 --sample-batch-size 32
                   --nfe 1,50 --repeats 2 --channels-last both --grad-checkpointing both
                   --sections train,sample";;
    *) echo "--arch $1 --batch-size 32 --steps 4 --blocks 2 --sample-batch-size 32 --nfe 1,50 --repeats 2";;
  esac
}
for arch in $ARCHS; do
  if [ "$arch" = digits ]; then args="--teacher digits"; else args=$(args_for "$arch"); fi
  if [ "${QUICK:-0}" = 1 ]; then  # tiny: exercises every section, not a measurement
    args="$args --batch-size 4 --steps 1 --blocks 1 --warmup 1 --sample-batch-size 8 --nfe 1,2 --repeats 1
          --eval-samples 70 --reference-samples 70 --reference-steps 2"
  fi
  echo "== $arch: bench perf $args" | tr -s ' \n' ' '; echo
  # shellcheck disable=SC2086  # word splitting of $args is intended
  if ! timeout "${ARCH_TIMEOUT:-170}" "$PY" -m perf --no-mlflow --device "$DEVICE" \
      --compile "$COMPILE" $args --json "$OUT/$arch.json" 2>&1 | tee "$OUT/$arch.txt"; then
    echo "gpu_bench: $arch failed or passed ARCH_TIMEOUT=${ARCH_TIMEOUT:-170}s; see $OUT/$arch.txt"
  fi
done

# 3. one table over the architectures
"$PY" scripts/perf_table.py "$OUT"/*.json | tee "$OUT/table.md"
echo "gpu_bench: done in $((SECONDS - start)) s; tables and JSON in $OUT/"
