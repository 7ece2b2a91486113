"""Install the wheels brought along into a folder, for a machine without network or our deps.

    python scripts/install_wheels.py WHEELS_DIR TARGET_DIR

A wheel is installed only if this interpreter cannot already import its module (so the GPU
image's own numpy, torch, pillow, ... are never shadowed), except for the diffusers stack,
whose versions must match what we tested. Wheels are zip archives; installing one without
pip is unpacking it (``*.data/purelib|platlib`` go to the top). Among several builds of one
package the first whose tags this interpreter supports is used. Put TARGET_DIR on PYTHONPATH.
"""
from __future__ import annotations

import importlib.util
import re
import sys
import zipfile
from pathlib import Path

# distribution -> import name, where they differ
MODULES = {"huggingface_hub": "huggingface_hub", "importlib_metadata": "importlib_metadata",
           "pyyaml": "yaml", "torch_fidelity": "torch_fidelity", "charset_normalizer": "charset_normalizer",
           "typing_extensions": "typing_extensions", "hf_xet": "hf_xet", "pillow": "PIL"}
ALWAYS = {"diffusers", "huggingface_hub", "torch_fidelity", "httpx2", "httpcore2"}


def _supported_tags() -> set[str]:
    try:
        from packaging.tags import sys_tags

        return {str(t) for t in sys_tags()}
    except ImportError:  # crude fallback: pure-Python wheels and this CPython's own tag
        v = f"cp{sys.version_info.major}{sys.version_info.minor}"
        return {"py3-none-any", f"{v}-{v}-linux_x86_64", f"{v}-abi3-linux_x86_64"}


def _tags(wheel: Path) -> set[str]:
    """Expanded tags of a wheel file name (compressed sets such as manylinux a.b split out)."""
    py, abi, plat = wheel.stem.split("-")[-3:]
    return {f"{p}-{a}-{q}" for p in py.split(".") for a in abi.split(".") for q in plat.split(".")}


def _unpack(wheel: Path, target: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename
            m = re.match(r"[^/]+\.data/(purelib|platlib)/(.+)", name)
            if m:
                name = m.group(2)
            elif re.match(r"[^/]+\.data/", name):
                continue  # scripts, headers, data: not needed to import
            if name.endswith("/"):
                continue
            out = target / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(zf.read(info))


def main(wheels: str, target: str) -> int:
    supported, chosen = _supported_tags(), {}
    for wheel in sorted(Path(wheels).glob("*.whl")):
        dist = wheel.name.split("-")[0].lower().replace("-", "_")
        if dist not in chosen and _tags(wheel) & supported:
            chosen[dist] = wheel
    installed = []
    for dist, wheel in sorted(chosen.items()):
        module = MODULES.get(dist, dist)
        if dist in ALWAYS or importlib.util.find_spec(module) is None:
            _unpack(wheel, Path(target))
            installed.append(dist)
    print(f"install_wheels: {len(installed)} of {len(chosen)} wheels unpacked into {target}: "
          f"{', '.join(installed) or 'none needed'}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    sys.exit(main(sys.argv[1], sys.argv[2]))
