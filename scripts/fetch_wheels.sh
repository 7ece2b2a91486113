#!/usr/bin/env bash
# Fetch the wheels that scripts/gpu_bench.sh and scripts/gpu_e2e.sh install on the GPU machine:
# its image (Python 3.12, torch 2.11, torchvision, numpy, pandas, scipy, scikit-learn,
# matplotlib, pyarrow, protobuf, requests, pyyaml, safetensors, huggingface_hub 1.33, tqdm, ...;
# /work/.library/device/KINDS.md lists them) lacks diffusers, torch-fidelity and mlflow and has
# no network. Run it here (PyPI reachable); wheels/ then travels with the working tree (it is
# git-ignored; the tree's transfer limit is 64 MiB in all). Versions are those of this
# checkout's .venv, the ones the tests ran with. Only what the image lacks is fetched, plus a
# few small packages the image has but perhaps too old for our wheels (install_wheels.py
# unpacks those only if so).
#
# MLflow: `bench run` needs the sqlite tracking store (sqlalchemy + alembic, and the store code
# that only the full `mlflow` wheel has; mlflow-skinny lacks it), so the full mlflow wheel is
# fetched, which holds all of mlflow-skinny and mlflow-tracing too, and repacked without its
# UI's JavaScript (mlflow/server/js, 7.6 MB of 12 MB; no UI runs there) as
# mlflow-3.17.2-1nojs-py3-none-any.whl. `import mlflow` + the sqlite store then need what
# PURE_MLFLOW and BINARY list (found by importing in an environment holding only the image's
# packages; gitpython is left out: mlflow warns once that git is unavailable).
#
# Ray Tune (bench sweep) cannot travel: ray 2.60's cp312 wheel alone is 79.3 MB (75.6 MiB).
#
# Env: WHEELS (default wheels), PY_VERSIONS for the binary wheels (default "3.12", the GPU
# image's Python; e.g. "3.11" for a CPU rehearsal), PYTHON (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${WHEELS:-wheels}
PY_VERSIONS=${PY_VERSIONS:-"3.12"}
PY=${PYTHON:-.venv/bin/python}
# diffusers (`from diffusers import UNet2DModel`) and torch-fidelity. Not huggingface-hub: the
# image's 1.33 satisfies diffusers (>= 1.32), and the image's transformers (imported by diffusers
# through peft) refuses hub 2.x: carrying it broke every diffusers import on an H200
PURE_BENCH="diffusers importlib_metadata zipp torch-fidelity"
PURE_MLFLOW="mlflow alembic mako sqlparse cachetools databricks-sdk fastapi starlette pydantic annotated-types
             typing-inspection opentelemetry-api opentelemetry-sdk opentelemetry-proto
             opentelemetry-semantic-conventions"
# in the image, but our wheels want at least these versions (pydantic: typing-extensions >= 4.16,
# idna, anyio, h11, click: kept as a floor for the other wheels):
# unpacked only where the image's is older
PURE_FLOOR="typing_extensions idna anyio h11 click"
BINARY="sqlalchemy pydantic-core cryptography cffi"   # cryptography: abi3, one wheel for all
pin() {  # name==version as installed in the venv, else the bare name
  "$PY" -c "import importlib.metadata as m, sys
try: print(f'{sys.argv[1]}=={m.version(sys.argv[1])}')
except m.PackageNotFoundError: print(sys.argv[1])" "$1"
}
mkdir -p "$OUT"
for p in $PURE_BENCH $PURE_MLFLOW $PURE_FLOOR; do
  "$PY" -m pip download -q --no-deps -d "$OUT" "$(pin "$p")" 2>&1 | { grep -v "is ignored" || true; }
done
binary() {  # $1 python version, $2 requirement
  "$PY" -m pip download -q --no-deps --only-binary=:all: --implementation cp --python-version "$1" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$OUT" "$2" 2>&1 | { grep -v "is ignored" || true; }
}
for v in $PY_VERSIONS; do
  for p in $BINARY; do
    binary "$v" "$(pin "$p")" || binary "$v" "$p"  # the venv's version may have no build for $v
  done
done
# the full mlflow wheel without the UI's JavaScript (and its RECORD lines)
"$PY" - "$OUT" <<'PYEOF'
import re, sys, zipfile
from pathlib import Path
out = Path(sys.argv[1])
for src in sorted(out.glob("mlflow-*-py3-none-any.whl")):
    if "nojs" in src.name:
        continue
    name, version = src.name.split("-")[:2]
    dst = out / f"{name}-{version}-1nojs-py3-none-any.whl"
    drop = re.compile(r"mlflow/server/js/")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        for info in zin.infolist():
            if drop.match(info.filename):
                continue
            data = zin.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(l for l in data.splitlines(keepends=True) if not drop.match(l.decode()))
            zout.writestr(info, data)
    src.unlink()
    print(f"fetch_wheels: {dst.name}: {dst.stat().st_size / 2**20:.1f} MiB (UI JavaScript left out)")
PYEOF
echo "fetch_wheels: $(ls "$OUT"/*.whl | wc -l) wheels in $OUT/ ($(du -sh "$OUT" | cut -f1))"
