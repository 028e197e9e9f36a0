"""`scripts/bench startup`: how long `pio-remote` takes to start, against `python3 -c pass`.

Three commands, each run as a user runs them, warm (after two unmeasured runs),
interleaved so that load from other processes hits them alike:

- ``python -c pass``: the interpreter alone, the baseline;
- ``pio-remote --version``: the CLI's own start-up cost (imports) and nothing else;
- ``pio-remote agent list``: a real command against a local relay with one agent
  online: imports, connecting, the relay's answer and printing the table.

Targets (issue 8, "Startup time"): ``--version`` <= 0.3 s and ``agent list``
<= 0.6 s, as medians of wall-clock time. With ``--pyz FILE`` the single-file archive
is timed instead, run as ``python3 -I FILE`` as on a Raspberry Pi, against issue 10's
targets: ``--version`` <= 0.5 s and ``agent list`` <= 0.8 s (warm: shiv has unpacked it).
CPU time (user + system) is printed beside them: on a shared machine it moves far
less than wall-clock time.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import time
from pathlib import Path

from harness import rig, stats
from harness.rig import PY
from harness.stats import AT_MOST, Row, Target

VERSION_TARGET = Target(AT_MOST, 300, "ms")
AGENT_LIST_TARGET = Target(AT_MOST, 600, "ms")
PYZ_VERSION_TARGET = Target(AT_MOST, 500, "ms")
PYZ_AGENT_LIST_TARGET = Target(AT_MOST, 800, "ms")
WARMUP_RUNS = 2
RUN_TIMEOUT_S = 30.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench startup", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=15, help="measured runs per command (median)")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--keep-logs", action="store_true")
    p.add_argument("--pyz", type=Path, help="time this single-file archive (python3 -I FILE)")
    return p.parse_args(argv)


def pio_remote() -> list[str]:
    """The installed `pio-remote` script beside this interpreter, else `python -m pio_remote`."""
    script = Path(PY).with_name("pio-remote")
    return [str(script)] if script.exists() else [PY, "-m", "pio_remote"]


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run; fails loudly if the command fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, timeout=RUN_TIMEOUT_S)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {result.returncode}: {result.stderr!r}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def measure(commands: dict[str, list[str]], env: dict[str, str], runs: int) -> dict:
    samples: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in commands}
    for i in range(WARMUP_RUNS + runs):
        for name, argv in commands.items():
            wall, cpu = timed(argv, env)
            if i >= WARMUP_RUNS:
                samples[name]["wall"].append(wall)
                samples[name]["cpu"].append(cpu)
    return samples


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    machine = stats.machine_line()
    print(f"startup benchmark: {machine}")
    cli = [PY, "-I", str(args.pyz)] if args.pyz else pio_remote()
    version_target, list_target = (
        (PYZ_VERSION_TARGET, PYZ_AGENT_LIST_TARGET)
        if args.pyz
        else (VERSION_TARGET, AGENT_LIST_TARGET)
    )
    with rig.world(keep=args.keep_logs) as w:
        w.start_agent("bench-startup")
        commands = {
            "python -c pass": [PY, "-c", "pass"],
            "pio-remote --version": [*cli, "--version"],
            "pio-remote agent list": [*cli, "agent", "list"],
        }
        print(f"relay {w.url}; {args.runs} runs per command; {' '.join(cli)}", flush=True)
        samples = measure(commands, w.client_env(), args.runs)
    load_after = stats.load_line()

    def med(name: str, kind: str) -> float:
        return stats.median(samples[name][kind]) * 1000

    base = "python -c pass"
    rows = [
        Row(
            "--version, wall",
            med("pio-remote --version", "wall"),
            "ms",
            med(base, "wall"),
            version_target,
            digits=0,
        ),
        Row(
            "agent list, wall",
            med("pio-remote agent list", "wall"),
            "ms",
            med(base, "wall"),
            list_target,
            digits=0,
        ),
        Row("--version, CPU", med("pio-remote --version", "cpu"), "ms", med(base, "cpu"), digits=0),
        Row(
            "agent list, CPU", med("pio-remote agent list", "cpu"), "ms", med(base, "cpu"), digits=0
        ),
    ]
    ok = stats.print_table(
        "startup: medians (baseline column: python -c pass; ratio = ours / baseline)",
        "python -c pass",
        rows,
    )
    print(f"  {load_after} after the runs")
    if args.json:
        stats.write_json(args.json, "startup", machine, rows, {"runs": args.runs})
    return 1 if args.check and not ok else 0
