"""`scripts/bench pytest-hil`: a pytest-embedded suite on a remote board against a local one.

The same 20-test suite (each test one ``dut.write`` and one ``dut.expect``) runs, as a
user runs it, in a fresh pytest process each time, on one echo pty board:

- local: ``--embedded-services serial --port BOARD``, straight to the pty (the baseline);
- remote: the same suite through the pytest plugin (``--pio-remote-agent``,
  ``--pio-remote-port BOARD``): relay, agent, a lease, an in-process RFC 2217 forward.

Runs alternate local/remote so load from other processes hits them alike; medians of
wall-clock time of the whole pytest run are compared. Target (issue 19): remote <= 1.3x
local. Also printed: the time from starting pytest to the first ``expect`` returning,
locally, remotely with the firmware flashed (a new image each run) and with the flash
skipped (the agent reports the same image on the board). The uploader is a no-op
command, so the flash figure is pio-remote's own cost of a flash.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

from harness import rig, stats
from harness.rig import PY, ROOT
from harness.stats import AT_MOST, Row, Target

SUITE_TARGET = Target(AT_MOST, 1.3)
TESTS = 20
RUN_TIMEOUT_S = 300.0
PTYDEV = ROOT / "tests" / "e2e" / "ptydev.py"
SUITE = """
import time
from pathlib import Path

STAMP = Path(__file__).with_name("first-expect")


def test_00_first(dut):
    dut.write("first line")
    dut.expect("first line", timeout=10)
    STAMP.write_text(repr(time.time()))
""" + "".join(
    f"""

def test_{i:02d}(dut):
    dut.write("message {i}")
    dut.expect("message {i}", timeout=10)
"""
    for i in range(1, TESTS)
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench pytest-hil", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3, help="measured runs per variant (median)")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--keep-logs", action="store_true")
    return p.parse_args(argv)


def run_suite(suite: Path, args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds of the pytest run, seconds from its start to the first expect)."""
    stamp = suite.with_name("first-expect")
    stamp.unlink(missing_ok=True)
    start_epoch = time.time()
    start = time.perf_counter()
    result = subprocess.run(
        [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite), *args],
        cwd=suite.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    wall = time.perf_counter() - start
    if result.returncode != 0 or f"{TESTS} passed" not in result.stdout:
        raise SystemExit(f"the suite failed ({' '.join(args)}):\n{result.stdout[-3000:]}")
    return wall, float(stamp.read_text()) - start_epoch


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    machine = stats.machine_line()
    print(f"pytest-hil benchmark: {machine}")
    with rig.world(keep=args.keep_logs) as w:
        suite_dir = w.workdir / "suite"
        suite_dir.mkdir()
        (suite_dir / "pytest.ini").write_text("[pytest]\n")
        suite = suite_dir / "test_hil.py"
        suite.write_text(SUITE)
        board = w.workdir / "dev" / "e0"
        board.parent.mkdir()
        firmware = w.workdir / "fw.bin"
        (w.home / "agent.toml").write_text(
            f'port_glob = "{board.parent}/*"\n'
            f'[[uploader]]\nports = "{board.parent}/*"\ncommand = "{PY} -c pass $SOURCE"\n'
        )
        w.spawn("board", [PY, str(PTYDEV), "echo", str(board)], rig.child_env()).wait_for("ptydev")
        w.start_agent("bench-hil")
        env = w.client_env()
        local = ["--embedded-services", "serial", "--port", str(board)]
        remote = ["--embedded-services", "serial", "--pio-remote-agent", "bench-hil"]
        remote += ["--pio-remote-port", str(board), "--pio-remote-firmware", str(firmware)]
        firmware.write_bytes(b"warm-up image")
        for variant in (local, remote):  # unmeasured: imports cached, relay warm
            run_suite(suite, variant, env)
        samples: dict[str, list[tuple[float, float]]] = {"local": [], "remote": [], "flash": []}
        for i in range(args.runs):
            samples["local"].append(run_suite(suite, local, env))
            samples["remote"].append(run_suite(suite, remote, env))  # same image: skipped
            firmware.write_bytes(b"image %d" % i)
            samples["flash"].append(run_suite(suite, remote, env))
            print(f"run {i + 1}/{args.runs} done ({stats.load_line()})", flush=True)

    def med(name: str, which: int) -> float:
        return stats.median([s[which] for s in samples[name]]) * 1000

    rows = [
        Row("suite, 20 tests (whole run)", med("remote", 0), "ms", med("local", 0), SUITE_TARGET),
        Row("first expect, flash skipped", med("remote", 1), "ms", med("local", 1)),
        Row("first expect, flashed", med("flash", 1), "ms", med("local", 1)),
        Row("suite with flash (whole run)", med("flash", 0), "ms", med("local", 0)),
    ]
    ok = stats.print_table(
        f"pytest-embedded suite, remote board vs local pty (medians of {args.runs})",
        "local",
        rows,
    )
    print(f"load after: {stats.load_line()}")
    if args.json:
        stats.write_json(args.json, "pytest-hil", machine, rows, {"runs": args.runs})
    return 1 if args.check and not ok else 0
