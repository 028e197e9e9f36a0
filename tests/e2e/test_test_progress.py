"""`pio-remote test` while it runs: lines as suites end, a live line per board on a
terminal, and SIGINT/SIGTERM that still leave the reports and the summary.

Real relay, agent and client processes; the boards are QEMU machines, one of
them flashed with the firmware that hangs after its first case.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import time

import pytest
from conftest import PY, Proc
from junitparser import Error
from test_remote_test import Farmhouse, json_checked, junit_checked

from pio_remote.vboard import FIRMWARE_UNITY_HANG, FIRMWARE_V1, BoardFarm

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm missing"),
]


@pytest.fixture
def house(world, tmp_path):
    return Farmhouse(world, tmp_path)


def _start_test(house: Farmhouse, *args: str) -> Proc:
    return house.world.spawn([PY, "-m", "pio_remote", "-a", "lab", "test", *args], house.desk.env)


@pytest.mark.parametrize(
    ("sig", "code", "name"),
    [(signal.SIGINT, 130, "SIGINT (Ctrl-C)"), (signal.SIGTERM, 143, "SIGTERM")],
)
def test_a_signal_mid_run_writes_the_reports_with_the_interrupted_suite_errored(
    house, tmp_path, sig, code, name
):
    with BoardFarm(tmp_path / "vb", count=3, firmware=FIRMWARE_V1) as farm:
        house.agent("lab", tmp_path / "vb")
        farm.upload(2, FIRMWARE_UNITY_HANG)  # runs its first case, then hangs
        proc = _start_test(
            house, "--firmware", str(FIRMWARE_V1), "--without-uploading", "--timeout", "100",
            "--json-output-path", str(tmp_path / "r.json"),
            "--junit-output-path", str(tmp_path / "r.xml"),
        )  # fmt: skip
        # Pipe mode: each suite's line comes as it ends, long before the run would.
        for i in (0, 1):
            proc.wait_for_bytes(
                rf"{re.escape(farm.port(i))}\b[^\n]*PASSED".encode(),
                err=True,
                timeout=60,
            )
        assert proc.popen.poll() is None, "the run ended before the hanging board's timeout"
        started = time.monotonic()
        os.killpg(proc.pid, sig)  # what a terminal's Ctrl-C or a CI runner's cancel sends
        result = proc.finished(timeout=30)
    assert time.monotonic() - started < 15  # not the 100 s the hanging board would take
    assert result.returncode == code, result.stderr
    hung_name = f"firmware:blink-v1@lab:{farm.port(2)}"
    suites = {ts.name: ts for ts in junit_checked(tmp_path / "r.xml")}
    assert set(suites) == {f"firmware:blink-v1@lab:{farm.port(i)}" for i in range(3)}
    hung = suites[hung_name]
    [error] = [c.result[0] for c in hung if c.result and isinstance(c.result[0], Error)]
    assert error.message == f"interrupted by {name}"
    for i in (0, 1):
        ok = suites[f"firmware:blink-v1@lab:{farm.port(i)}"]
        assert (ok.tests, ok.failures, ok.errors) == (3, 0, 0)
    data = json_checked(tmp_path / "r.json")
    status = {f"{s['env_name']}:{s['test_name']}": s["status"] for s in data["test_suites"]}
    assert status[hung_name] == "ERRORED"
    assert [v for k, v in status.items() if k != hung_name] == ["PASSED", "PASSED"]
    assert "3 board(s), 3 suite(s)" in result.stdout  # the summary, as after a full run
    assert f"Stopped: interrupted by {name}: 2 suite(s) finished, 1 interrupted" in result.stderr
    assert "Traceback" not in result.stderr and "Aborted" not in result.stderr


ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\r")


def test_a_terminal_shows_a_live_line_per_board_while_the_run_lasts(house, tmp_path):
    with BoardFarm(tmp_path / "vb", count=1, firmware=FIRMWARE_UNITY_HANG) as farm:
        house.agent("lab", tmp_path / "vb")
        master, slave = os.openpty()
        env = {**house.desk.env, "TERM": "xterm-256color", "COLUMNS": "200", "LINES": "40"}
        child = subprocess.Popen(
            [PY, "-m", "pio_remote", "-a", "lab", "test", "--firmware", str(FIRMWARE_UNITY_HANG),
             "--without-uploading", "--timeout", "100", "--json-output-path",
             str(tmp_path / "r.json")],
            env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        seen = b""
        want = re.compile(
            rb"lab:" + re.escape(farm.port(0).encode())
            + rb"  running  suite 1/1 firmware:unity-hang  1 passed, 0 failed  \d+s"
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not want.search(ANSI.sub(b"", seen)) and time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 1)
                if ready:
                    seen += os.read(master, 65536)
            assert want.search(ANSI.sub(b"", seen)), ANSI.sub(b"", seen)[-2000:]
            assert child.poll() is None  # seen while the run lasts
            os.killpg(child.pid, signal.SIGINT)
            deadline = time.monotonic() + 30
            while child.poll() is None and time.monotonic() < deadline:
                if select.select([master], [], [], 0.5)[0]:
                    try:
                        seen += os.read(master, 65536)
                    except OSError:
                        break
            assert child.wait(timeout=30) == 130
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
            os.close(master)
    # The case the live line counted is in the report, before the interrupt's error.
    [suite] = json.loads((tmp_path / "r.json").read_text())["test_suites"]
    cases = [(c["name"], c["status"]) for c in suite["test_cases"]]
    assert cases == [("test_add", "PASSED"), ("unity-hang", "ERRORED")]
