"""Remote serial monitor end to end: relay, agent, CLI and pty devices as real processes.

One relay + agent + paired client serves most of the module (start-ups cost
about a second each), once per agent serial backend (fd, thread); every test
plugs in its own pty devices and unplugs them after. The relay-restart test gets
a world of its own.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import termios
import time
from collections.abc import Iterator

import psutil
import pytest
import trio
from conftest import PY, Env
from monitorkit import LAB_GRACE, Lab, MonitorProc, line_speed, make_lab

from pio_remote.client.monitor.remote import open_monitor

# Bounds for the flood test. Generous for a loaded 2-core machine, yet far
# below what an unbounded buffer would reach: the device writes ~100+ MB/s.
FLOOD_RSS_GROWTH_MB = 40
ECHO_LATENCY_BOUND_S = 0.5


@pytest.fixture(scope="module", params=["fd", "thread"])
def shared_lab(tmp_path_factory, request) -> Iterator[Lab]:
    """One lab per agent serial backend: every test below runs on both."""
    world, lab = make_lab(tmp_path_factory.mktemp("monitor"), serial_backend=request.param)
    try:
        yield lab
    finally:
        lab.stop_devices_and_monitors()
        world.close()


@pytest.fixture
def lab(shared_lab: Lab) -> Iterator[Lab]:
    try:
        yield shared_lab
    finally:
        shared_lab.stop_devices_and_monitors()


def monitor_cli(lab: Lab, port, *args: str, input: bytes = b"", timeout: float = 30):
    """`printf INPUT | pio-remote -a lab-pi device monitor -p PORT ARGS`, bytes in and out."""
    return subprocess.run(
        [PY, "-m", "pio_remote", "-a", "lab-pi", "device", "monitor", "-p", str(port), *args],
        env=lab.desk.env,
        input=input,
        capture_output=True,
        timeout=timeout,
    )


# ---- pipe mode ------------------------------------------------------------------------


def test_pipe_mode_line_round_trip_with_demo_board(lab: Lab):
    board = lab.dev_dir / "demo"
    lab.devices.append(lab.world.board(board))
    result = monitor_cli(lab, board, input=b"hi\n")
    assert result.returncode == 0, result.stderr
    # CRLF mode: "hi\n" went out as "hi\r\n", came back, and rx made it "hi\n" again.
    assert b"hi\n" in result.stdout
    assert b"Terminal on lab-pi:" in result.stderr


def test_raw_mode_passes_every_byte_value_both_ways(lab: Lab):
    link = lab.device("echo", "raw-echo")
    payload = os.urandom(64 * 1024) + bytes(range(256))
    result = monitor_cli(lab, link, "--raw", "--quiet", "--eof-linger", "1", input=payload)
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload


def test_eof_linger_zero_and_port_errors(lab: Lab):
    link = lab.device("echo", "err-echo")
    start = time.monotonic()
    result = monitor_cli(lab, link, "--eof-linger", "0")
    assert result.returncode == 0 and time.monotonic() - start < 10
    missing = monitor_cli(lab, lab.dev_dir / "nope")
    assert missing.returncode == 1
    assert b"offers no port" in missing.stderr and b"device list" in missing.stderr


def test_agent_and_port_are_chosen_on_the_monitors_own_connection(lab: Lab):
    """No -a and a glob for -p: the only agent online, the only port matching."""
    link = lab.device("echo", "glob-echo")
    result = subprocess.run(
        [PY, "-m", "pio_remote", "device", "monitor", "-p", str(lab.dev_dir / "glob-e*")],
        env=lab.desk.env,
        input=b"chosen\n",
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert b"chosen\n" in result.stdout
    assert f"Terminal on lab-pi:{link}".encode() in result.stderr
    nothing = monitor_cli(lab, lab.dev_dir / "none-*")
    assert nothing.returncode == 2  # ChoiceError: a usage error (docs/cli.md)
    assert b"matches" in nothing.stderr and b"Traceback" not in nothing.stderr, nothing.stderr


# ---- one owner per port, kept for a resume when the client dies -------------------------


def test_second_monitor_is_refused_and_killed_client_frees_the_port_after_the_grace(lab: Lab):
    link = lab.device("echo", "busy-echo")
    first = lab.monitor("-p", str(link))
    first.write(b"one\n")
    first.wait_for(b"one\n")
    busy = monitor_cli(lab, link)
    assert busy.returncode == 1
    assert b"in use" in busy.stderr and b"alice" in busy.stderr and b"client key" in busy.stderr

    first.kill(signal.SIGKILL)
    killed_at = time.monotonic()
    # The lost session's port is kept for its client to resume: others wait the grace out.
    kept = monitor_cli(lab, link, "--eof-linger", "0")
    assert kept.returncode == 1 and b"in use" in kept.stderr, kept.stderr
    assert time.monotonic() - killed_at < LAB_GRACE
    while True:
        again = monitor_cli(lab, link, "--eof-linger", "0.3", input=b"two\n")
        if again.returncode == 0:
            break
        assert b"in use" in again.stderr, again.stderr
        # Each try is a whole CLI run: seconds apiece on a loaded 2-core machine.
        assert time.monotonic() - killed_at < LAB_GRACE + 20, "not freed after the grace period"
    assert time.monotonic() - killed_at >= LAB_GRACE
    assert b"two\n" in again.stdout


def test_a_monitor_that_quits_frees_the_port_at_once(lab: Lab):
    link = lab.device("echo", "quit-echo")
    for word in (b"one\n", b"two\n"):
        started = time.monotonic()
        done = monitor_cli(lab, link, "--eof-linger", "0.3", input=word)
        assert done.returncode == 0, done.stderr
        assert word in done.stdout
        assert time.monotonic() - started < LAB_GRACE  # not held for a resume


# ---- device unplugged and plugged back in ------------------------------------------------


def test_unplugged_device_is_announced_and_output_resumes(lab: Lab):
    link = lab.device("echo", "plug-echo")
    mon = lab.monitor("-p", str(link))
    mon.write(b"before\n")
    mon.wait_for(b"before\n")
    lab.devices.pop().stop()  # SIGTERM: the pty closes and the link goes
    mon.wait_for(rb"disconnected .*waiting for it to come back", err=True)
    lab.device("echo", "plug-echo")
    mon.wait_for(rb"is back, monitoring again", err=True)
    mon.write(b"after\n")
    mon.wait_for(b"after\n")
    mon.close_stdin()
    assert mon.wait() == 0


# ---- backpressure ----------------------------------------------------------------------


async def test_flood_to_a_client_that_does_not_read_stays_bounded(lab: Lab):
    """A full-speed device and a stalled reader: memory bounded, others unaffected."""
    flood = lab.device("flood", "flood")
    echo = lab.device("echo", "side-echo")
    agent = psutil.Process(lab.agent.popen.pid)
    relay = psutil.Process(lab.world.relay.proc.popen.pid)  # type: ignore[union-attr]
    before = {"agent": agent.memory_info().rss, "relay": relay.memory_info().rss}
    peak = dict(before)
    latencies: list[float] = []
    with trio.fail_after(30):
        async with open_monitor("lab-pi", str(flood), **lab.connect_args()) as stalled:
            assert stalled.connected  # and from here on, nobody reads it
            async with open_monitor("lab-pi", str(echo), **lab.connect_args()) as side:
                for i in range(30):
                    for name, proc in (("agent", agent), ("relay", relay)):
                        peak[name] = max(peak[name], proc.memory_info().rss)
                    token = b"ping %d\n" % i
                    sent = trio.current_time()
                    await side.send(token)
                    got = b""
                    while token not in got:
                        item = await side.receive()
                        if isinstance(item, bytes):
                            got += item
                    latencies.append(trio.current_time() - sent)
                    await trio.sleep(0.05)  # pacing: 30 pings spread over ~2 s of flood
                # The agent stopped reading the flood: it is (nearly) idle.
                cpu = await trio.to_thread.run_sync(lambda: agent.cpu_percent(interval=1.0))
        # Leaving a stalled monitor cancels it mid-stream; the agent serves on.
        async with open_monitor("lab-pi", str(echo), **lab.connect_args()) as after:
            await after.send(b"after\n")
            got = b""
            while b"after\n" not in got:
                item = await after.receive()
                got += item if isinstance(item, bytes) else b""
    growth = {k: (peak[k] - before[k]) / 2**20 for k in peak}
    assert growth["agent"] < FLOOD_RSS_GROWTH_MB, growth
    assert growth["relay"] < FLOOD_RSS_GROWTH_MB, growth
    assert max(latencies) < ECHO_LATENCY_BOUND_S, latencies
    assert cpu < 50, f"agent still busy ({cpu}% CPU): it keeps reading a port nobody reads"


# ---- relay restart ---------------------------------------------------------------------


def test_relay_restart_mid_session_client_reconnects_and_resumes(tmp_path):
    world, lab = make_lab(tmp_path, pair=False)
    try:
        link = lab.device("echo", "relay-echo")
        mon = lab.monitor("-p", str(link))
        mon.write(b"before\n")
        mon.wait_for(b"before\n")
        port = world.relay.port
        world.relay.stop()
        mon.wait_for(rb"connection lost", err=True)
        world.relay.start(port=port)
        mon.wait_for(rb"reconnected to agent lab-pi", err=True, timeout=20)
        mon.write(b"after\n")
        mon.wait_for(b"after\n")
        mon.close_stdin()
        assert mon.wait() == 0
    finally:
        lab.stop_devices_and_monitors()
        world.close()


# ---- terminal mode ---------------------------------------------------------------------


class Tty:
    """A monitor whose stdin/stdout/stderr are a pty, as when a person runs it."""

    def __init__(self, lab: Lab, *args: str, env: dict[str, str] | None = None):
        self.master, self.slave = os.openpty()
        self.saved = termios.tcgetattr(self.slave)
        self.screen = b""
        self.popen = subprocess.Popen(
            [PY, "-m", "pio_remote", "-a", "lab-pi", "device", "monitor", *args],
            env=env or lab.desk.env,
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            start_new_session=True,
        )

    def expect(self, pattern: bytes, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while pattern not in self.screen:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.master], [], [], max(0.0, left))
            assert ready, f"screen never showed {pattern!r}: {self.screen[-1500:]!r}"
            self.screen += os.read(self.master, 65536)

    def rest_of_screen(self) -> bytes:
        """Everything shown, once the process has exited."""
        while select.select([self.master], [], [], 0)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.screen += chunk
        return self.screen

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)
        os.close(self.master)
        os.close(self.slave)


def test_terminal_mode_menu_reaches_the_port_and_the_terminal_is_restored(lab: Lab):
    link = lab.device("echo", "tty-echo")
    tty = Tty(lab, "-p", str(link))
    try:
        tty.expect(b"Quit: Ctrl+C | Menu: Ctrl+T")
        assert termios.tcgetattr(tty.slave)[3] & termios.ICANON == 0  # character mode
        tty.type(b"hello\r")
        tty.expect(b"hello")
        tty.type(b"\x14b11520O\r")  # Ctrl+T b, a typo: a clear message, no Python internals
        tty.expect(b"baud rate must be a whole number like 115200, not '11520O'")
        assert b"int()" not in tty.screen
        tty.type(b"\x14b115200\r")  # Ctrl+T b: new baud rate
        tty.expect(b"Settings: 115200 8-N-1")
        assert line_speed(link) == termios.B115200
        tty.type(b"\x14\x04")  # Ctrl+T Ctrl+D: toggle DTR, which a pty does not have
        tty.expect(b"no DTR line")
        tty.type(b"\x14\x09")  # Ctrl+T Ctrl+I: info
        tty.expect(b"DTR inactive")
        tty.type(b"\x03")  # Ctrl+C: the exit character
        assert tty.popen.wait(10) == 0
        assert termios.tcgetattr(tty.slave) == tty.saved
    finally:
        tty.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_terminal_is_restored_when_the_monitor_is_terminated(lab: Lab, signum: int):
    link = lab.device("echo", "tty-term")
    tty = Tty(lab, "-p", str(link))
    try:
        tty.expect(b"Quit: Ctrl+C | Menu: Ctrl+T")  # shown once in character mode
        assert termios.tcgetattr(tty.slave)[3] & termios.ICANON == 0
        os.killpg(tty.popen.pid, signum)
        assert tty.popen.wait(10) == 128 + signum
        assert termios.tcgetattr(tty.slave) == tty.saved
        assert b"Traceback" not in tty.rest_of_screen(), tty.screen[-3000:]
    finally:
        tty.close()


def test_a_signal_while_connecting_exits_cleanly(lab: Lab):
    """The signal receiver is in place before connecting: a hung relay is no trap."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        env = {**lab.desk.env, "PIO_REMOTE_RELAY": f"ws://127.0.0.1:{silent.getsockname()[1]}"}
        tty = Tty(lab, "-p", str(lab.dev_dir / "any"), env=env)
        try:
            silent.settimeout(20)
            conn, _ = silent.accept()  # the monitor is connecting now
            with conn:
                assert termios.tcgetattr(tty.slave)[3] & termios.ICANON == 0
                os.killpg(tty.popen.pid, signal.SIGHUP)
                assert tty.popen.wait(10) == 128 + signal.SIGHUP
            assert termios.tcgetattr(tty.slave) == tty.saved
            assert b"Traceback" not in tty.rest_of_screen(), tty.screen[-3000:]
        finally:
            tty.close()


def test_a_signal_while_connecting_exits_cleanly_in_pipe_mode(lab: Lab):
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"ws://127.0.0.1:{silent.getsockname()[1]}"
        desk = Env(lab.desk.home, {**lab.desk.extra, "PIO_REMOTE_RELAY": url})
        mon = MonitorProc(desk, ["-a", "lab-pi", "device", "monitor", "-p", "/dev/any"])
        try:
            silent.settimeout(20)
            conn, _ = silent.accept()
            with conn:
                os.killpg(mon.popen.pid, signal.SIGTERM)
                assert mon.wait(10) == 128 + signal.SIGTERM  # not killed by it
        finally:
            mon.kill()
        assert "Traceback" not in mon.stderr_text(), mon.stderr_text()
