"""The pytest plugin against a real relay and agents: an unchanged pytest-embedded suite,
plain remote_board suites, two agents, flash skipping, and a SIGKILLed runner's lease."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest
import trio
from conftest import PY, Proc
from monitorkit import PTYDEV

from pio_remote.client.api import Client, PortLeasedError

pytest.importorskip("pytest_embedded_serial")

UPLOADER = """
import sys
with open(sys.argv[1], "a") as log:
    log.write(sys.argv[2] + "\\n")
"""

EMBEDDED_SUITE = """
def test_echo(dut):
    dut.write("hello board")
    dut.expect("hello board", timeout=10)


def test_second(dut):
    dut.write("again")
    dut.expect_exact("again", timeout=10)
"""


class Lab:
    """Agents with echo pty boards; ``ci`` is the paired client that runs pytest."""

    def __init__(self, world, tmp):
        self.world, self.tmp = world, tmp
        self.ci = world.machine("ci", "alice")
        self.uploads = tmp / "uploads.log"
        (tmp / "uploader.py").write_text(UPLOADER)
        self.boards: dict[str, str] = {}

    def agent(self, name: str) -> str:
        dev = self.tmp / f"dev-{name}"
        dev.mkdir()
        board = dev / "e0"
        home = self.world.machine(name, "alice")
        (home.home / "agent.toml").write_text(
            f'port_glob = "{dev}/*"\n'
            f'[[uploader]]\nports = "{dev}/*"\n'
            f'command = "{PY} {self.tmp}/uploader.py {self.uploads} $UPLOAD_PORT"\n'
        )
        proc = Proc([PY, PTYDEV, "echo", str(board)], home.env)
        self.world.procs.append(proc)
        proc.wait_for("ptydev")
        self.world.start_agent(home, name)
        self.world.pair(home, self.ci, name)
        self.boards[name] = str(board)
        return str(board)

    def pytest(self, suite: str, *args: str, name: str = "test_suite.py", timeout: float = 120):
        path = self.tmp / "suite" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(suite)
        return subprocess.run(
            [PY, "-m", "pytest", "-p", "no:cacheprovider", str(path), *args],
            cwd=path.parent,
            env=self.ci.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def connect(self):
        return Client.connect(self.world.relay.url, self.world.account("alice"), self.ci.home)


@pytest.fixture
def lab(world, tmp_path):
    return Lab(world, tmp_path)


def _properties(junit) -> list[dict[str, str]]:
    cases = ET.parse(junit).getroot().iter("testcase")
    return [{p.get("name"): p.get("value") for p in case.iter("property")} for case in cases]


def test_an_unchanged_pytest_embedded_suite_runs_on_a_remote_board(lab, tmp_path):
    board = lab.agent("lab")
    firmware = tmp_path / "fw.bin"
    firmware.write_bytes(b"embedded" * 64)
    junit = tmp_path / "junit.xml"
    args = ["--embedded-services", "serial", "--pio-remote-agent", "lab"]
    args += ["--pio-remote-port", board, "--pio-remote-firmware", str(firmware)]
    result = lab.pytest(EMBEDDED_SUITE, *args, f"--junitxml={junit}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout
    props = _properties(junit)
    assert len(props) == 2
    for p in props:
        assert p["pio_remote.agent"] == "alice/lab" and p["pio_remote.port"] == board
        assert len(p["pio_remote.firmware_sha256"]) == 64
    assert lab.uploads.read_text().splitlines() == [board]
    # The same image again: the agent reports it on the board, so nothing is flashed.
    result = lab.pytest(EMBEDDED_SUITE, *args)
    assert result.returncode == 0, result.stdout[-3000:]
    assert lab.uploads.read_text().splitlines() == [board]
    firmware.write_bytes(b"changed" * 64)
    assert lab.pytest(EMBEDDED_SUITE, *args).returncode == 0
    assert lab.uploads.read_text().splitlines() == [board, board]


PLAIN_SUITE = """
def test_boards(remote_boards):
    assert len(remote_boards) == 2
    assert {b.agent for b in remote_boards} == {"alice/east", "alice/west"}
    for board in remote_boards:
        assert board.url.startswith("rfc2217://127.0.0.1:")
        board.serial.write(b"ping " + board.agent.encode() + b"\\n")
        assert board.serial.read_until(b"\\n") == b"ping " + board.agent.encode() + b"\\n"


def test_fails_with_the_serial_tail(remote_board):
    remote_board.serial.write(b"last words before failing\\n")
    assert remote_board.serial.read_until(b"\\n").endswith(b"failing\\n")
    assert False, "on purpose"
"""


MULTI_DUT_SUITE = """
def test_two_duts(dut):
    first, second = dut
    first.write("to the first")
    second.write("to the second")
    first.expect("to the first", timeout=10)
    second.expect("to the second", timeout=10)
"""


def test_two_boards_on_two_agents_and_a_failure_carries_the_serial_tail(lab):
    lab.agent("east")
    lab.agent("west")
    result = lab.pytest(PLAIN_SUITE, "--pio-remote-port", "*/e0", "--pio-remote-count", "2")
    assert result.returncode == 1, result.stdout[-3000:]
    assert "1 failed, 1 passed" in result.stdout
    assert "pio-remote serial alice/east:" in result.stdout
    assert "last words before failing" in result.stdout
    # pytest-embedded's --count 2: its --port is both boards' URLs joined by "|".
    args = ["--embedded-services", "serial", "--count", "2", "--pio-remote-port", "*/e0"]
    result = lab.pytest(MULTI_DUT_SUITE, *args, name="test_multi.py")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


HOLD_SUITE = """
import sys

def test_hold(remote_board):
    print("HOLDING", remote_board.lease, flush=True)
    sys.stdin.read()  # until the test kills us
"""


def test_a_sigkilled_runner_keeps_its_lease_until_the_ttl_and_no_longer(lab):
    board = lab.agent("lab")
    path = lab.tmp / "hold" / "test_hold.py"
    path.parent.mkdir()
    path.write_text(HOLD_SUITE)
    runner = Proc(
        [PY, "-m", "pytest", "-s", "-p", "no:cacheprovider", str(path)]
        + ["--pio-remote-port", board, "--pio-remote-lease-ttl", "6"],
        {**lab.ci.env, "PYTHONUNBUFFERED": "1"},
        stdin=True,
    )
    lab.world.procs.append(runner)
    runner.wait_for("HOLDING", timeout=60)
    os.killpg(runner.popen.pid, signal.SIGKILL)
    runner.popen.wait(10)
    listed = json.loads(lab.ci.cli("-a", "lab", "device", "list", "--json-output").stdout)
    [entry] = [d for d in listed["lab"] if d["port"] == board]
    until = float(entry["lease"]["until"])

    async def check() -> float:
        with trio.fail_after(30):
            async with lab.connect() as client, client.session("lab") as other:
                with pytest.raises(PortLeasedError):  # kept after the kill
                    async with other.lock(board):
                        pass
                async with other.lock(board, wait=20):  # free once the TTL passes
                    return time.time()

    taken = trio.run(check)
    assert until - 0.5 <= taken <= until + 5
