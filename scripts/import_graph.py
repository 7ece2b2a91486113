"""The project's import graph, read from the source (every ``import``, at module level or inside
a function): packages and who imports whom, import cycles between modules, and the layering
rule (the core imports no method, sweep, perf or report module). The registries load the
modules that register their built-in entries on first use (``Registry(builtins=...)``); those
loads are listed apart and are not imports: they run after both sides are initialised, and
``bench.registry`` naming ``methods`` there is the one place where the core reaches methods.

    python scripts/import_graph.py            # the package graph and any violations
    python scripts/import_graph.py --modules  # every module's project imports
"""
from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "methods", "sweeps", "perf", "reports")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Project modules ``path`` imports (``from a.b import c`` counts as a.b, and a.b.c if that is a module)."""
    found = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args \
                and isinstance(node.args[0], ast.Constant):
            found.add(node.args[0].value)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def registry_loads() -> list[str]:
    """The modules the registries load on first use (``builtins="..."``)."""
    tree = ast.parse((ROOT / "bench" / "registry.py").read_text())
    return sorted(k.value.value for k in ast.walk(tree)
                  if isinstance(k, ast.keyword) and k.arg == "builtins" and isinstance(k.value, ast.Constant))


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def upward(g: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Core modules importing a method, sweep, perf or report module (outside the allowance)."""
    bad = []
    for src, targets in g.items():
        if src.split(".")[0] != "bench":
            continue
        for t in sorted(targets):
            if t.split(".")[0] != "bench":
                bad.append((src, t))
    return bad


def package_graph(g: dict[str, set[str]]) -> dict[str, set[str]]:
    pk = defaultdict(set)
    for src, targets in g.items():
        for t in targets:
            if src.split(".")[0] != t.split(".")[0]:
                pk[src.split(".")[0]].add(t.split(".")[0])
    return pk


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modules", action="store_true", help="print every module's project imports")
    args = p.parse_args()
    g = graph()
    if args.modules:
        for name in sorted(g):
            print(f"{name}: {', '.join(sorted(g[name])) or '-'}")
    for pkg, targets in sorted(package_graph(g).items()):
        print(f"{pkg} -> {', '.join(sorted(targets))}")
    print(f"bench.registry loads on first use: {', '.join(registry_loads())}")
    bad, circles = upward(g), cycles(g)
    for src, t in bad:
        print(f"layering: {src} imports {t}")
    for c in circles:
        print(f"cycle: {' <-> '.join(c)}")
    print(f"{len(g)} modules, {sum(map(len, g.values()))} imports, {len(circles)} cycles, "
          f"{len(bad)} upward imports from the core")
    return 1 if bad or circles else 0


if __name__ == "__main__":
    sys.exit(main())
