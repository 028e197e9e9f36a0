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
from pathlib import Path

import pytest
from conftest import PY, Proc
from junitparser import Error
from test_remote_test import Farmhouse, json_checked, junit_checked

from pio_remote.vboard import FIRMWARE_UNITY_HANG, FIRMWARE_V1, FIRMWARE_V2, BoardFarm

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


class PtyRun:
    """A CLI run with stdin, stdout and stderr on a pty, as in a terminal."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.master, slave = os.openpty()
        env = {**env, "TERM": "xterm-256color", "COLUMNS": "200", "LINES": "40"}
        self.child = subprocess.Popen(
            argv, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
        )
        os.close(slave)
        self.seen = b""

    def __enter__(self) -> PtyRun:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.child.poll() is None:
            os.killpg(self.child.pid, signal.SIGKILL)
            self.child.wait()
        os.close(self.master)

    def _read(self, timeout: float) -> bool:
        if not select.select([self.master], [], [], timeout)[0]:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed its end
            return False
        self.seen += data
        return bool(data)

    @property
    def text(self) -> bytes:
        return ANSI.sub(b"", self.seen)

    def read_until(self, patterns: list[re.Pattern[bytes]], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not all(p.search(self.text) for p in patterns):
            assert time.monotonic() < deadline, self.text[-3000:]
            assert self._read(0.5), self.text[-3000:]

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.child.poll() is None and time.monotonic() < deadline and self._read(0.5):
            pass
        return self.child.wait(timeout)


def test_a_terminal_shows_a_live_line_per_board_while_the_run_lasts(house, tmp_path):
    with BoardFarm(tmp_path / "vb", count=1, firmware=FIRMWARE_UNITY_HANG) as farm:
        house.agent("lab", tmp_path / "vb")
        argv = [PY, "-m", "pio_remote", "-a", "lab", "test", "--firmware",
                str(FIRMWARE_UNITY_HANG), "--without-uploading", "--timeout", "100",
                "--json-output-path", str(tmp_path / "r.json")]  # fmt: skip
        want = re.compile(
            rb"lab:" + re.escape(farm.port(0).encode())
            + rb"  running  suite 1/1 firmware:unity-hang  1 passed, 0 failed  \d+s"
        )  # fmt: skip
        with PtyRun(argv, house.desk.env) as run:
            run.read_until([want])
            assert run.child.poll() is None  # seen while the run lasts
            os.killpg(run.child.pid, signal.SIGINT)
            assert run.wait() == 130
    # The case the live line counted is in the report, before the interrupt's error.
    [suite] = json.loads((tmp_path / "r.json").read_text())["test_suites"]
    cases = [(c["name"], c["status"]) for c in suite["test_cases"]]
    assert cases == [("test_add", "PASSED"), ("unity-hang", "ERRORED")]


def _slow_farm(house: Farmhouse, vb: Path) -> None:
    """An agent whose board2 uploader never ends (a stuck bootloader); the rest flash."""
    machine = house.world.machine("lab", "alice")
    (machine.home / "agent.toml").write_text(
        f'[[uploader]]\nports = "{vb}/board2"\ncommand = "sleep 300"\n'
        f'[[uploader]]\nports = "{vb}/board*"\n'
        f'command = "{PY} -m pio_remote.vboard upload $UPLOAD_PORT $SOURCE"\n'
    )
    house.world.start_agent(machine, "lab", "--port-glob", f"{vb}/board*")
    house.world.pair(machine, house.desk, "lab")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_run_upload_on_a_farm_says_which_boards_finished_when_stopped(house, tmp_path, sig, code):
    vb = tmp_path / "vb"
    with BoardFarm(vb, count=3, firmware=FIRMWARE_V1) as farm:
        _slow_farm(house, vb)
        proc = house.world.spawn(
            [PY, "-m", "pio_remote", "-a", "lab", "run", "-t", "upload", "--firmware",
             str(FIRMWARE_V2), "--upload-port", f"{vb}/board*"],
            house.desk.env,
        )  # fmt: skip
        for i in (0, 1):  # in a pipe, a line as each board ends, while board2 still flashes
            proc.wait_for_bytes(f"lab:{farm.port(i)}: uploaded\n".encode(), err=True, timeout=60)
        assert proc.popen.poll() is None
        os.killpg(proc.pid, sig)
        result = proc.finished(timeout=30)
    assert result.returncode == code, result.stderr
    name = "SIGINT (Ctrl-C)" if sig == signal.SIGINT else "SIGTERM"
    lines = [ln for ln in result.stdout.splitlines() if not ln.startswith("[")]
    assert lines == [
        f"lab:{farm.port(0)}: uploaded",
        f"lab:{farm.port(1)}: uploaded",
        f"lab:{farm.port(2)}: not finished (interrupted by {name})",
    ]
    assert f"Stopped: interrupted by {name}: 1 board(s) not finished" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_upload_on_a_farm_shows_a_live_line_per_board_on_a_terminal(house, tmp_path):
    vb = tmp_path / "vb"
    with BoardFarm(vb, count=3, firmware=FIRMWARE_V1) as farm:
        _slow_farm(house, vb)
        argv = [PY, "-m", "pio_remote", "-a", "lab", "run", "-t", "upload", "--firmware",
                str(FIRMWARE_V2), "--upload-port", f"{vb}/board*"]  # fmt: skip
        want = [
            re.compile(rb"lab:" + re.escape(farm.port(2).encode()) + rb"  flashing  \d+s"),
            re.compile(rb"lab:" + re.escape(farm.port(0).encode()) + rb"  uploaded  \d+s"),
        ]
        with PtyRun(argv, house.desk.env) as run:
            run.read_until(want)
            assert run.child.poll() is None  # seen while board2 still flashes
            os.killpg(run.child.pid, signal.SIGINT)
            assert run.wait() == 130


def test_sigterm_during_a_local_build_stops_the_build_and_still_reports(house, tmp_path):
    from proctools import wait_gone
    from test_remote_test import make_test_project

    project = make_test_project(tmp_path / "proj")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "pio").write_text("#!/bin/sh\necho building $$\nexec sleep 300\n")
    (bindir / "pio").chmod(0o755)
    house.desk.extra["PATH"] = f"{bindir}:/usr/bin:/bin"
    with BoardFarm(tmp_path / "vb", count=1, firmware=FIRMWARE_V1) as farm:
        house.agent("lab", tmp_path / "vb")
        proc = _start_test(
            house, "-d", str(project), "--upload-port", farm.port(0),
            "--json-output-path", str(tmp_path / "r.json"),
        )  # fmt: skip
        # The build's output goes to the client's stderr.
        build = int(proc.wait_for_bytes(rb"building (\d+)\n", err=True, timeout=60)[1])
        os.kill(proc.pid, signal.SIGTERM)  # the client only, as a CI runner may
        result = proc.finished(timeout=30)
    assert result.returncode == 143, result.stderr
    assert wait_gone([build], 10), "the local build outlived the run"
    assert json.loads((tmp_path / "r.json").read_text())["test_suites"] == []
    assert "Stopped: interrupted by SIGTERM: 0 suite(s) finished, 0 interrupted" in result.stderr
