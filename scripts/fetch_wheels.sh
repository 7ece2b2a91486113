#!/usr/bin/env bash
# Fetch the wheels scripts/gpu_bench.sh installs on a GPU machine whose image has torch,
# torchvision, numpy, pandas, scipy and matplotlib but none of our other dependencies and no
# network. Run it here (PyPI reachable); wheels/ then travels with the working tree (it is
# git-ignored). Versions are those of this checkout's .venv, the ones the tests ran with.
# Env: WHEELS (default wheels), PY_VERSIONS for the binary wheels (default "3.10 3.11 3.12").
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${WHEELS:-wheels}
PY_VERSIONS=${PY_VERSIONS:-"3.10 3.11 3.12"}
PY=${PYTHON:-.venv/bin/python}
# what `from diffusers import UNet2DModel` pulls in at run time (checked in an environment with
# only torch and the image's packages), plus tqdm and torch-fidelity for bench itself
PURE="diffusers huggingface-hub importlib_metadata zipp requests idna certifi urllib3 httpx2
      httpcore2 anyio h11 truststore tqdm torch-fidelity filelock fsspec packaging typing_extensions"
BINARY="safetensors pyyaml"              # imported at run time: required
OPTIONAL="regex charset_normalizer"      # used by parts of diffusers/requests that bench never calls
pin() {  # name==version as installed in the venv, else the bare name
  "$PY" -c "import importlib.metadata as m, sys
try: print(f'{sys.argv[1]}=={m.version(sys.argv[1])}')
except m.PackageNotFoundError: print(sys.argv[1])" "$1"
}
mkdir -p "$OUT"
for p in $PURE; do
  "$PY" -m pip download -q --no-deps -d "$OUT" "$(pin "$p")"
done
binary() {  # $1 python version, $2 requirement
  "$PY" -m pip download -q --no-deps --only-binary=:all: --implementation cp --python-version "$1" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$OUT" "$2"
}
for v in $PY_VERSIONS; do
  for p in $BINARY; do
    binary "$v" "$(pin "$p")" || binary "$v" "$p"  # the venv's version may have no build for $v
  done
  for p in $OPTIONAL; do
    binary "$v" "$(pin "$p")" 2>/dev/null || binary "$v" "$p" 2>/dev/null \
      || echo "fetch_wheels: no $p wheel for Python $v (optional, skipped)"
  done
done
echo "fetch_wheels: $(ls "$OUT"/*.whl | wc -l) wheels in $OUT/ ($(du -sh "$OUT" | cut -f1))"
