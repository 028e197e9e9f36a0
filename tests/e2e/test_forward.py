"""`device forward`: pyserial's rfc2217:// client and misbehaving TCP clients drive a remote pty.

One relay, agent and forward serve the module (start-ups cost about a second
each). Waits are on the forward's own notes (``--- PORT: 115200 8-N-1`` once
the agent applied a setting, ``--- PEER disconnected``), never on sleeps.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import serial
from conftest import PY, Proc
from monitorkit import Forward, Lab, line_speed, make_lab

# pyserial's rfc2217 client uses Thread.setDaemon(); not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# A connection's end, as the forward notes it: "PEER disconnected" or "PEER: why".
ENDED = r"127\.0\.0\.1:\d+( disconnected|: )"


@dataclass
class Setup:
    lab: Lab
    link: Path
    fwd: Forward

    def applied(self, settings: str, mark: int) -> None:
        """Wait until the agent reports ``settings`` (e.g. ``115200 8-N-1``) applied."""
        self.fwd.wait_for_new(rf"{re.escape(str(self.link))}: {re.escape(settings)}$", mark)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Iterator[Setup]:
    world, lab = make_lab(tmp_path_factory.mktemp("forward"), pair=False)
    try:
        link = lab.device("echo", "fwd-echo")
        yield Setup(lab, link, lab.forward(link))
    finally:
        lab.stop_devices_and_monitors()
        world.close()


def assert_serves(url: str) -> None:
    """A well-behaved pyserial client gets a working port.

    The echo device may still be echoing what the last client sent after this
    client's open: that it prints first, as it would on a local port.
    """
    with serial.serial_for_url(url, baudrate=115200, timeout=10) as ser:
        ser.write(b"ping\r\n")
        assert ser.read_until(b"ping\r\n").endswith(b"ping\r\n")


def test_unknown_port_is_refused(setup: Setup):
    refused = setup.lab.desk.cli(
        "-a", "lab-pi", "device", "forward", "-p", "/dev/nope", "--listen", "127.0.0.1:0",
        check=False,
    )  # fmt: skip
    assert refused.returncode == 2  # a port the agent does not offer: usage (docs/cli.md)
    assert "offers no port '/dev/nope'" in refused.stderr, refused.stderr


def test_pyserial_over_rfc2217_changes_baud_and_moves_bytes(setup: Setup):
    link, fwd = setup.link, setup.fwd
    mark = fwd.mark()
    with serial.serial_for_url(fwd.url, baudrate=115200, timeout=5) as ser:
        setup.applied("115200 8-N-1", mark)
        assert line_speed(link) == termios.B115200
        ser.write(b"ping\r\n")
        assert ser.read_until(b"ping\r\n") == b"ping\r\n"
        every_byte = bytes(range(256)) * 16  # 0xFF is telnet's IAC: escaped both ways
        ser.write(every_byte)
        assert ser.read(len(every_byte)) == every_byte

        mark = fwd.mark()
        ser.baudrate = 57600
        setup.applied("57600 8-N-1", mark)
        assert line_speed(link) == termios.B57600
        ser.dtr = False  # a pty has no DTR: the agent warns, the session goes on
        fwd.wait_for_new("no DTR", mark)
        ser.write(b"still\r\n")
        assert ser.read_until(b"still\r\n") == b"still\r\n"

    # The port was released with the connection: the next tool gets it at once.
    mark = fwd.mark()
    with serial.serial_for_url(fwd.url, baudrate=9600, timeout=5) as again:
        again.write(b"x")
        assert again.read(1) == b"x"
        setup.applied("9600 8-N-1", mark)
        assert line_speed(link) == termios.B9600


# ---- clients that go away or misbehave end only their own connection ------------------

KILLED_WRITER = """
import os, sys, serial
ser = serial.serial_for_url(sys.argv[1], baudrate=115200)
block = os.urandom(4096)
for i in range(100_000):
    ser.write(block)
    if i == 50:
        print("writing", flush=True)
"""


def killed_while_writing(setup: Setup) -> None:
    writer = Proc([PY, "-c", KILLED_WRITER, setup.fwd.url], setup.lab.desk.env)
    setup.lab.world.procs.append(writer)
    writer.wait_for("writing")
    writer.stop(signal.SIGKILL)


def closed_after_writing_without_reading(setup: Setup) -> None:
    ser = serial.serial_for_url(setup.fwd.url, baudrate=115200)
    ser.write(os.urandom(3 * 512 * 1024))  # 1.5 MiB; the echo is never read
    ser.close()


def raw_socket_closed_with_unread_data(setup: Setup) -> None:
    with socket.create_connection(setup.fwd.address, timeout=10) as sock:
        sock.sendall(b"x" * 10_000)  # no telnet at all: plain bytes, echoed
        while b"x" not in sock.recv(65536):
            pass
        sock.sendall(b"y" * 100_000)  # and close with its echo unread: a reset
    # leaving the block closes the socket


def random_burst_then_close(setup: Setup) -> None:
    host, port = setup.fwd.address
    subprocess.run(
        ["bash", "-c", f"head -c 100000 /dev/urandom > /dev/tcp/{host}/{port}"],
        check=True,
        timeout=30,
    )


CASES: dict[str, Callable[[Setup], None]] = {
    "kill -9 of a writing pyserial client": killed_while_writing,
    "close() after writing 1.5 MiB, echo unread": closed_after_writing_without_reading,
    "raw socket closed with unread data": raw_socket_closed_with_unread_data,
    "100,000 random bytes, then close": random_burst_then_close,
}


@pytest.mark.parametrize("case", CASES)
def test_a_client_that_goes_away_ends_only_its_own_connection(setup: Setup, case: str):
    fwd = setup.fwd
    mark = fwd.mark()
    CASES[case](setup)
    fwd.wait_for_new(ENDED, mark)
    assert fwd.popen.poll() is None, f"the forward exited: {fwd.lines[mark:]}"
    assert_serves(fwd.url)
    assert not any("Traceback" in line for line in fwd.lines), fwd.lines[mark:]


# ---- what the board prints as the port opens reaches the client ------------------------


def test_boot_banner_printed_as_the_port_opens_is_not_lost(setup: Setup):
    """As on a local port: a client sees what the board prints after its open and purge."""
    board = setup.lab.device("banner", "fwd-banner")
    fwd = setup.lab.forward(board)
    for boot in (1, 2):
        mark = fwd.mark()  # before the connection: its end is noted after this line
        with serial.serial_for_url(fwd.url, baudrate=115200, timeout=10) as ser:
            expected = b"boot %d: rst:0x1 (POWERON)\r\nboot %d: ready\r\n" % (boot, boot)
            assert ser.read_until(b"ready\r\n") == expected
            ser.write(b"echo\r\n")
            assert ser.read_until(b"echo\r\n") == b"echo\r\n"
        fwd.wait_for_new(ENDED, mark)
    # miniterm, on a terminal as a person runs it, shows the banner too.
    mark = fwd.mark()
    screen = run_on_a_terminal(
        [PY, "-m", "serial.tools.miniterm", fwd.url, "115200"], b"boot 3: ready"
    )
    assert b"boot 3: rst:0x1 (POWERON)\r\r\nboot 3: ready" in screen, screen  # tty: ONLCR
    fwd.wait_for_new(ENDED, mark)


def run_on_a_terminal(args: list[str], until: bytes, timeout: float = 20.0) -> bytes:
    """Run ``args`` with a pty as its terminal until ``until`` is on the screen; then Ctrl+]."""
    master, slave = os.openpty()
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    screen = b""
    try:
        deadline = time.monotonic() + timeout
        while until not in screen:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"the screen never showed {until!r}: {screen[-2000:]!r}"
            screen += os.read(master, 65536)
        os.write(master, b"\x1d")  # miniterm's exit key
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
    return screen


# ---- one session for the whole forward, reconnected when the relay comes back ----------


def test_forward_renews_its_session_after_a_relay_or_agent_restart(tmp_path):
    world, lab = make_lab(tmp_path, pair=False)
    try:
        link = lab.device("echo", "restart-echo")
        fwd = lab.forward(link)
        assert_serves(fwd.url)
        mark = fwd.mark()
        port = world.relay.port
        world.relay.stop()
        fwd.wait_for_new("connection to the agent lost", mark)
        world.relay.start(port=port)
        fwd.wait_for_new("reconnected to agent lab-pi", mark, timeout=30)
        assert_serves(fwd.url)
        # The agent restarts while no tool is connected: the next tool still gets the port.
        lab.agent.stop()
        lab.agent = world.start_agent(lab.desk, "lab-pi", "--port-glob", str(lab.dev_dir / "*"))
        mark = fwd.mark()
        assert_serves(fwd.url)
        fwd.wait_for_new("reconnected to agent lab-pi", mark)
        assert fwd.popen.poll() is None
    finally:
        lab.stop_devices_and_monitors()
        world.close()
