"""The shape of the code base: no import cycles, the core imports no method, sweep, perf or
report module (the registry loads the methods package by name: the one allowed place), and the
command line is built without importing torch (``bench --help`` stays quick)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _graph_module():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_cycles_and_no_upward_imports():
    ig = _graph_module()
    g = ig.graph()
    assert ig.cycles(g) == []
    assert ig.upward(g) == []
    assert "methods" in ig.registry_loads()
    packages = ig.package_graph(g)
    assert packages["bench"] == set()  # the core depends on no other package of ours
    assert "perf" not in packages["methods"] | packages["sweeps"] | packages["reports"]


def test_the_command_line_is_built_without_torch():
    code = ("import sys; from bench.cli import _parser; _parser(); "
            "print(sorted(m for m in ('torch', 'mlflow', 'ray', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
