#!/usr/bin/env python3
"""Dispatcher behind `scripts/bench NAME [args]`; `scripts/bench` lists the benchmarks.

Each benchmark lives in scripts/benchmarks/NAME.py with a `main(argv)` function,
measures against a baseline in the same run, and prints its figures and ratios.
"""

import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))


# Shared pieces, not benchmarks.
HELPERS = frozenset({"floor", "farm_floor"})


def available() -> list[str]:
    return sorted(
        p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_") and p.stem not in HELPERS
    )


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        names = ", ".join(n.replace("_", "-") for n in available())
        print("usage: scripts/bench NAME [args]\nbenchmarks: " + names)
        return 0
    name = sys.argv[1].replace("-", "_")
    if name not in available():
        print(f"unknown benchmark {sys.argv[1]!r}; available: {', '.join(available())}")
        return 2
    return importlib.import_module(name).main(sys.argv[2:]) or 0


if __name__ == "__main__":
    sys.exit(main())
