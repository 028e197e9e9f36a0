"""One way to compute, show and keep a benchmark's results: figures against a baseline."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def percentile(values: Sequence[float], pct: int) -> float:
    """The ``pct``-th percentile (1-99), interpolated between samples like numpy's default."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


AT_LEAST = ">="
AT_MOST = "<="


@dataclass(frozen=True)
class Target:
    """A pass mark. On ours/baseline by default (``>= 1x`` throughput, ``<= 2x`` latency);
    with a ``unit`` it is an absolute limit on the figure itself (``<= 40 KiB``)."""

    op: str  # AT_LEAST or AT_MOST
    limit: float
    unit: str = ""  # "" for a ratio to the baseline

    @property
    def on_ratio(self) -> bool:
        return not self.unit

    def met(self, x: float) -> bool:
        return x >= self.limit if self.op == AT_LEAST else x <= self.limit

    def __str__(self) -> str:
        return f"{self.op} {self.limit:g}" + (f" {self.unit}" if self.unit else "x")


@dataclass(frozen=True)
class Row:
    """One line of a results table. ``baseline=None`` or ``target=None`` means "for information"."""

    figure: str
    value: float
    unit: str
    baseline: float | None = None
    target: Target | None = None
    digits: int = 1

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        measured = self.ratio if self.target.on_ratio else self.value
        return None if measured is None else self.target.met(measured)


def print_table(title: str, baseline_name: str, rows: Sequence[Row]) -> bool:
    """Print figures, baseline, ratio, target and PASS/FAIL; True if no target was missed."""

    def fmt(x: float, row: Row) -> str:
        return f"{x:,.{row.digits}f} {row.unit}"

    table = [("figure", "ours", baseline_name, "ratio", "target", "result")]
    for row in rows:
        ratio = row.ratio
        passed = row.passed
        table.append(
            (
                row.figure,
                fmt(row.value, row),
                fmt(row.baseline, row) if row.baseline is not None else "-",
                f"{ratio:.2f}x" if ratio is not None else "-",
                str(row.target) if row.target else "-",
                {True: "PASS", False: "FAIL", None: "info"}[passed],
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    print(f"\n{title}")
    for i, cells in enumerate(table):
        print(
            "  "
            + "  ".join(
                c.ljust(w) if j == 0 else c.rjust(w)
                for j, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))
    return all(row.passed is not False for row in rows)


def write_json(
    path: Path, name: str, machine: str, rows: Sequence[Row], extra: dict[str, object]
) -> None:
    """Results as JSON, for comparing runs over time or across branches."""
    data = {
        "benchmark": name,
        "machine": machine,
        "rows": [
            {
                "figure": r.figure,
                "value": r.value,
                "unit": r.unit,
                "baseline": r.baseline,
                "ratio": r.ratio,
                "target": str(r.target) if r.target else None,
                "passed": r.passed,
            }
            for r in rows
        ],
        **extra,
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def machine_line() -> str:
    """Date, CPU count and model, Python, load: printed above results so runs can be compared."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores ({model}), "
        f"Python {sys.version.split()[0]}, {load_line()}"
    )


def load_line() -> str:
    """The 1-minute load average: on a shared 2-core machine it says how far to trust a run."""
    try:
        return f"load {os.getloadavg()[0]:.2f}"
    except OSError:
        return "load ?"
