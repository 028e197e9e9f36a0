"""docs/api.md's examples run as they stand: every ```python block above "Unit tests on
boards", each in a fresh interpreter as a user would paste it, against a real relay and
an agent ``lab-pi``. Its board is a pty (ptydev.py ``unity``: a boot banner and a passing
Unity run on each open) that the owner's ``[[power]]`` switches (powerswitch.py), with
``[[uploader]]``, ``[[reset]]`` and ``[[forward]]`` entries beside it. As the page says,
``/dev/`` becomes the board's directory and ``192.168.1.50:80`` a TCP echo server."""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import PY, ROOT, Env, World
from forwardkit import TcpServer
from monitorkit import PTYDEV

SWITCH = PTYDEV.replace("ptydev.py", "powerswitch.py")
DOC = ROOT / "docs" / "api.md"
METHODS = [
    "ports",
    "upload",
    "run_tests",
    "monitor",
    "lock",
    "forward_serial",
    "forward_tcp",
    "reset",
    "power",
]
LAN_DEVICE = "192.168.1.50:80"


@dataclass(frozen=True)
class Example:
    section: str  # the heading's first word: "boards", "ports", "run_tests"...
    blocking: bool  # a pio_remote.sync script; else a trio one
    code: str

    @property
    def id(self) -> str:
        return f"{self.section}-{'sync' if self.blocking else 'trio'}"


def examples() -> list[Example]:
    """The page's python blocks above "Unit tests on boards", named by their heading."""
    runnable = DOC.read_text().split("## Unit tests on boards")[0]
    found: list[Example] = []
    section = "connect"  # the page's first block, under its title
    lines = iter(runnable.splitlines())
    for line in lines:
        heading = re.match(r"^#{2,3} `?(\w+)", line)
        if heading:
            section = heading.group(1).lower()
        elif line == "```python":
            code = "\n".join(iter(lambda: next(lines), "```")) + "\n"
            found.append(Example(section, "pio_remote.sync import" in code, code))
    return found


# What each example prints when it works, beyond exiting 0; {board} and {sha} are the
# test's board and the sha256 of firmware.elf.
PRINTS = {
    "connect-trio": "alice",
    "boards-trio": "{sha}",
    "blocking-sync": "alice/lab-pi",
    "ports-trio": "{board} ",
    "ports-sync": "{board}",
    "upload-trio": "flashed {sha} with ",
    "upload-sync": "{sha}",
    "run_tests-trio": "test_add PASSED",
    "run_tests-sync": "junit.xml ok",
    "monitor-trio": "boot",
    "monitor-sync": "boot",
    "lock-trio": "leased until",
    "lock-sync": "holds {board}",
    "forward_serial-trio": "ready",
    "forward_serial-sync": "hello",
    "forward_tcp-trio": "GET / HTTP/1.0",
    "forward_tcp-sync": "GET /status HTTP/1.0",
    "reset-trio": "reset: open",
    "reset-sync": "reset: open",
    "power-trio": "off; now on again",
    "power-sync": "cycled {board}",
}


def test_each_typed_call_has_a_trio_and_a_blocking_example_of_its_own():
    by_id: dict[str, list[Example]] = {}
    for ex in examples():
        by_id.setdefault(ex.id, []).append(ex)
    assert {ex.section for ex in examples()} >= set(METHODS)
    for method in METHODS:
        for kind, runs in (("trio", "trio.run(main)"), ("sync", "with connect()")):
            [ex] = by_id.get(f"{method}-{kind}", [None])  # exactly one
            assert ex is not None, f"docs/api.md: no {kind} example for {method}()"
            assert runs in ex.code and f"lab.{method}(" in ex.code, ex.code
    assert set(by_id) == set(PRINTS), "an example without a stated output, or one gone"


@dataclass(frozen=True)
class Lab:
    client: Env
    work: Path
    board: Path
    server: TcpServer

    def substitute(self, code: str) -> str:
        return code.replace("/dev/", f"{self.board.parent}/").replace(
            LAN_DEVICE, self.server.address
        )


def _switch(action: str, board: Path) -> None:
    subprocess.run([PY, SWITCH, action, str(board), "unity"], check=True, timeout=30)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("apidoc")
    world = World(tmp)
    server = TcpServer("echo")
    board = tmp / "dev" / "ttyACM0"
    board.parent.mkdir()
    try:
        world.relay.start()
        owner = world.machine("lab", "alice")
        ports = f"{board.parent}/ttyACM*"
        (owner.home / "agent.toml").write_text(
            f'port_glob = "{ports}"\n'
            f'[[power]]\nports = "{ports}"\n'
            f'on = "{PY} {SWITCH} on $PORT unity"\noff = "{PY} {SWITCH} off $PORT"\n'
            "cycle_delay_ms = 50\n"
            f'[[reset]]\nports = "{ports}"\nstyle = "open"\n'
            f'[[uploader]]\nports = "{ports}"\ncommand = "{PY} -c pass $SOURCE"\n'
            f'[[forward]]\nallow = ["{server.address}"]\n'
        )
        _switch("on", board)
        world.start_agent(owner, "lab-pi")
        client = world.machine("ci", "alice")
        world.pair(owner, client, "lab-pi")
        work = tmp / "work"
        work.mkdir()
        (work / "firmware.elf").write_bytes(b"\x7fELF firmware" * 64)
        (work / "test.elf").write_bytes(b"\x7fELF unity tests" * 64)
        yield Lab(client, work, board, server)
    finally:
        world.close()
        server.listener.close()
        _switch("off", board)


@pytest.mark.parametrize("example", examples(), ids=lambda ex: ex.id)
def test_example_runs_against_a_real_agent(lab: Lab, example: Example):
    script = lab.work / f"{example.id}.py"
    script.write_text(lab.substitute(example.code))
    result = subprocess.run(
        [PY, str(script)],
        cwd=lab.work,
        env=lab.client.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    shown = f"{example.code}\nstdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}"
    assert result.returncode == 0, shown
    sha = hashlib.sha256((lab.work / "firmware.elf").read_bytes()).hexdigest()
    assert PRINTS[example.id].format(board=lab.board, sha=sha) in result.stdout, shown
