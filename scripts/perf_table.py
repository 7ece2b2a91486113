"""One Markdown table from several ``bench perf --json`` files (one column per file).

    python scripts/perf_table.py perf_out/*.json
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def _fmt(value) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return str(value)
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"


def table(paths: list[str]) -> str:
    runs = [json.loads(Path(p).read_text()) for p in paths if Path(p).is_file()]
    if not runs:
        return "perf_table: no results (every run failed?)"
    names = list(dict.fromkeys(k for r in runs for k in r["metrics"]))
    head = [f"{r['params']['perf.teacher']} / {r['params']['device_name']}" for r in runs]
    lines = ["| metric | " + " | ".join(head) + " |", "|---" * (len(runs) + 1) + "|"]
    for name in names:
        cells = [_fmt(r["metrics"].get(name, "")) for r in runs]
        lines.append(f"| perf/{name} | " + " | ".join(cells) + " |")
    sources = sorted({r["params"].get("peak_source", "") for r in runs} - {""})
    lines.append("")
    lines.append(f"MFU against: {'; '.join(sources) or 'n/a'}. Random-weight architectures: throughput only.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1:]))
