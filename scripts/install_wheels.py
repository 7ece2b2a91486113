"""Install the wheels brought along into a folder, for a machine without network or our deps.

    python scripts/install_wheels.py WHEELS_DIR TARGET_DIR

A wheel is installed only if this interpreter cannot already import its module (so the GPU
image's own numpy, torch, pillow, ... are never shadowed), except for the diffusers stack,
whose versions must match what we tested, and except where a wheel being installed needs a
newer version of a package this interpreter has (e.g. pydantic needs typing-extensions >= 4.16):
then the brought wheel of that package is installed too, and if none was brought the conflict
is printed (the run may still work: it is a warning). Wheels are zip archives; installing one
without pip is unpacking it (``*.data/purelib|platlib`` go to the top). Among several builds of
one package the first whose tags this interpreter supports is used. Put TARGET_DIR on PYTHONPATH.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
import zipfile
from pathlib import Path

# distribution -> import name, where they differ
MODULES = {"huggingface_hub": "huggingface_hub", "importlib_metadata": "importlib_metadata",
           "pyyaml": "yaml", "torch_fidelity": "torch_fidelity", "charset_normalizer": "charset_normalizer",
           "typing_extensions": "typing_extensions", "hf_xet": "hf_xet", "pillow": "PIL",
           "databricks_sdk": "databricks", "opentelemetry_api": "opentelemetry.trace",
           "opentelemetry_sdk": "opentelemetry.sdk", "opentelemetry_proto": "opentelemetry.proto",
           "opentelemetry_semantic_conventions": "opentelemetry.semconv", "protobuf": "google.protobuf",
           "python_dateutil": "dateutil", "scikit_learn": "sklearn", "gitpython": "git"}
ALWAYS = {"diffusers", "torch_fidelity"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


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


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a dotted name whose parent package is missing
        return False


def _installed_version(dist: str):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _requirements(wheel: Path) -> list:
    """The wheel's Requires-Dist entries that apply here (no extras), as packaging Requirements."""
    from packaging.requirements import InvalidRequirement, Requirement

    with zipfile.ZipFile(wheel) as zf:
        meta = next((n for n in zf.namelist() if re.match(r"[^/]+\.dist-info/METADATA$", n)), None)
        text = zf.read(meta).decode("utf-8", "replace") if meta else ""
    found = []
    for line in text.split("\n\n", 1)[0].splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        try:
            req = Requirement(line.split(":", 1)[1].strip())
        except InvalidRequirement:
            continue
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            found.append(req)
    return found


def _too_old(chosen: dict[str, Path], unpack: set[str]) -> tuple[set[str], list[str]]:
    """Packages this interpreter has in a version that a wheel being unpacked does not accept:
    (those brought as wheels, to unpack as well; conflicts nothing was brought for)."""
    if not _importable("packaging.requirements"):  # no way to compare versions: unpack nothing more
        return set(), []
    more, conflicts, todo = set(), [], sorted(unpack)
    while todo:
        dist = todo.pop()
        for req in _requirements(chosen[dist]):
            name = _norm(req.name)
            if name in unpack or name in more:
                continue
            have = _installed_version(name)
            if have is None or req.specifier.contains(have, prereleases=True):
                continue  # missing on purpose (e.g. mlflow's server deps), or good enough
            if name in chosen:
                more.add(name)
                todo.append(name)
            else:
                conflicts.append(f"{dist} needs {req}, this python has {name} {have}")
    return more, conflicts


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
        dist = _norm(wheel.name.split("-")[0])
        if dist not in chosen and _tags(wheel) & supported:
            chosen[dist] = wheel
    unpack = {d for d in chosen if d in ALWAYS or not _importable(MODULES.get(d, d))}
    newer, conflicts = _too_old(chosen, unpack)
    for dist in sorted(unpack | newer):
        _unpack(chosen[dist], Path(target))
    installed = sorted(unpack)
    if newer:
        installed += [f"{d} (newer than this python's {_installed_version(d)})" for d in sorted(newer)]
    print(f"install_wheels: {len(installed)} of {len(chosen)} wheels unpacked into {target}: "
          f"{', '.join(installed) or 'none needed'}")
    for line in conflicts:
        print(f"install_wheels: warning: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    sys.exit(main(sys.argv[1], sys.argv[2]))
