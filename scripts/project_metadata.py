"""Make this checkout's package metadata visible without installing it (no pip, no network).

    python scripts/project_metadata.py TARGET_DIR

Writes ``distill_bench-<version>.dist-info`` (METADATA, entry_points.txt) from pyproject.toml
into TARGET_DIR. With TARGET_DIR and the repo root on PYTHONPATH, ``python -m bench`` then finds
its ``bench.commands`` plugins (``perf``, ``report``, ``sweep``) through importlib.metadata, and
``version.distill-bench`` is tagged, as after ``pip install -e .``. Used by scripts/gpu_e2e.sh
on the GPU machine, whose image has no build backend for an offline editable install.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write(target: Path, pyproject: Path = ROOT / "pyproject.toml") -> Path:
    import tomllib  # Python 3.11+ (the GPU image has 3.12)

    project = tomllib.loads(pyproject.read_text())["project"]
    name, version = project["name"], project["version"]
    info = target / f"{name.replace('-', '_')}-{version}.dist-info"
    for old in target.glob(f"{name.replace('-', '_')}-*.dist-info"):
        shutil.rmtree(old)
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                   f"Summary: {project.get('description', '')}\n")
    groups = {"console_scripts": project.get("scripts", {}), **project.get("entry-points", {})}
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
        for group, eps in groups.items() if eps))
    (info / "INSTALLER").write_text("scripts/project_metadata.py\n")
    return info


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    print(f"project_metadata: wrote {write(Path(sys.argv[1]))}")
