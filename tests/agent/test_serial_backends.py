"""The two serial backends: which one runs where, and the thread backend's own promises.

The monitor's and the test runner's behaviour on both backends is tested where
they are used (test_monitor_agent.py, and the e2e monitor, upload and remote-test
tests); here are what only the thread backend has: a reader thread per port whose
read-ahead is bounded, cancellable writes, and a handle closed by that thread.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import tty
from pathlib import Path

import pytest
import trio
import trio.testing

from pio_remote.agent import config as agent_config
from pio_remote.agent.serial import backend
from pio_remote.agent.serial.common import COALESCE_LIMIT, PortClosed, PortGone
from pio_remote.agent.serial.threadport import ThreadSerialPort
from pio_remote.home import ConfigError
from pio_remote.wire.serial_events import SerialSettings


class Pty:
    def __init__(self, link: Path) -> None:
        self.link = link
        self.master, slave = os.openpty()
        tty.setraw(slave)
        os.symlink(os.ttyname(slave), link)
        os.close(slave)
        os.set_blocking(self.master, False)

    def slave_closed(self) -> bool:
        """Nobody has the port open: once what it wrote is read, the master reads EIO."""
        while True:
            try:
                if not os.read(self.master, 65536):
                    return False
            except BlockingIOError:
                return False
            except OSError as exc:
                return exc.errno == errno.EIO


def reader_threads(path: Path) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"serial {path}"]


def test_fd_here_thread_where_fds_cannot_be_polled(monkeypatch):
    assert backend.choose(None) == "fd"
    assert backend.choose("thread") == "thread"
    with pytest.raises(ValueError, match="one of fd, thread"):
        backend.choose("poll")
    monkeypatch.setattr(backend.os, "name", "nt")
    assert backend.choose(None) == "thread"
    with pytest.raises(ValueError, match="needs POSIX"):
        backend.choose("fd")


def test_without_fcntl_and_termios_the_agents_serial_code_imports_and_picks_thread():
    """As on Windows: the modules are not there (the fd backend's port.py is never imported).

    pyserial itself is imported first: on Linux it needs them, on Windows it does not.
    (The monitor module is not imported here: the agent's allow-list still locks with
    fcntl, which the filelock change for the trust files replaces.)
    """
    code = (
        "import sys, serial; sys.modules['fcntl'] = sys.modules['termios'] = None\n"
        "from pio_remote.agent.serial import backend, threadport\n"
        "assert 'pio_remote.agent.serial.port' not in sys.modules\n"
        "print(backend.choose(None))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "thread"


def test_agent_toml_names_a_backend_or_is_refused(tmp_path):
    assert agent_config.parse({"serial_backend": "thread"}).serial_backend == "thread"
    assert agent_config.parse({}).serial_backend is None
    with pytest.raises(ConfigError, match="serial_backend: serial backend must be one of"):
        agent_config.parse({"serial_backend": "select"})


async def test_a_port_nobody_takes_from_stops_being_read(tmp_path):
    """The credit: the port is read only when trio asks, one chunk at most ahead."""
    dev = Pty(tmp_path / "board")
    port, _ = await ThreadSerialPort.open(str(dev.link), SerialSettings())
    sent = bytearray()
    try:
        with trio.fail_after(10):
            block = bytes(range(256)) * 16
            while True:  # the pty fills only if nothing reads it
                try:
                    sent += block[: os.write(dev.master, block)]
                except BlockingIOError:
                    break
                await trio.lowlevel.checkpoint()
            assert port._chunk == b"" and not port._reading
            got = bytearray()
            while len(got) < len(sent):
                chunk = await port.read()
                assert len(chunk) <= COALESCE_LIMIT
                assert len(port._chunk) <= COALESCE_LIMIT  # the thread's one chunk ahead
                got += chunk
            assert got == sent
    finally:
        port.close()
        await port.wait_closed()


async def test_bytes_that_trickle_in_are_read_without_the_thread(tmp_path):
    """read_waiting takes what the driver holds in trio's thread; read() waits in the thread."""
    dev = Pty(tmp_path / "board")
    port, _ = await ThreadSerialPort.open(str(dev.link), SerialSettings())
    try:
        with trio.fail_after(10):
            assert port.read_waiting(100) == b""
            os.write(dev.master, b"one line\r\n")
            got = b""
            while len(got) < 10:
                got += port.read_waiting(100)
                await trio.lowlevel.checkpoint()
            assert got == b"one line\r\n" and not port._wanted.is_set()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: port.read())
                await trio.testing.wait_all_tasks_blocked()
                assert port._wanted.is_set()  # nothing waiting: the thread reads
                os.write(dev.master, b"x")
            assert port.read_waiting(10) == b""
    finally:
        port.close()
        await port.wait_closed()


async def test_close_ends_the_reader_and_the_handle(tmp_path):
    dev = Pty(tmp_path / "board")
    port, _ = await ThreadSerialPort.open(str(dev.link), SerialSettings())
    assert len(reader_threads(dev.link)) == 1
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                with pytest.raises(PortClosed):
                    await port.read()

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            port.close()
        await port.wait_closed()
    assert dev.slave_closed()
    for thread in reader_threads(dev.link):
        thread.join(5)
    assert reader_threads(dev.link) == []


async def test_a_write_the_device_never_takes_can_be_cancelled(tmp_path):
    dev = Pty(tmp_path / "board")
    port, _ = await ThreadSerialPort.open(str(dev.link), SerialSettings())
    with trio.fail_after(10):
        with trio.move_on_after(0.5) as scope:
            await port.write(b"x" * (4 * 1024 * 1024))  # far more than a pty buffers
        assert scope.cancelled_caught
        assert port.closed
        await port.wait_closed()
    assert dev.slave_closed()


async def test_an_unplugged_device_is_gone_after_what_it_sent(tmp_path):
    dev = Pty(tmp_path / "board")
    port, _ = await ThreadSerialPort.open(str(dev.link), SerialSettings())
    try:
        with trio.fail_after(10):
            os.write(dev.master, b"last words")
            got = b""
            while len(got) < 10:
                got += await port.read()
            assert got == b"last words"
            os.close(dev.master)
            with pytest.raises(PortGone):
                await port.read()
    finally:
        port.close()
        await port.wait_closed()
