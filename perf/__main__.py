"""``python -m perf``: ``bench perf`` without installing the package (e.g. on a GPU machine
whose image has only torch: scripts/gpu_bench.sh puts the repo and the wheels on PYTHONPATH)."""
import argparse
import sys

from bench.errors import BenchError
from perf.cli import add_parser

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m perf")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["perf", *sys.argv[1:]])
    try:
        sys.exit(args.handler(args))
    except BenchError as exc:
        print(f"bench perf: error: {exc}", file=sys.stderr)
        sys.exit(2)
