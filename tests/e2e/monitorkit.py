"""Helpers for monitor and forward tests: a lab world, pty devices, a live monitor process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import termios
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from conftest import PY, STARTUP_TIMEOUT, Env, Proc, World
from proctools import LineWatcher

PTYDEV = str(Path(__file__).with_name("ptydev.py"))


@dataclass
class Lab:
    world: World
    desk: Env
    agent: Proc
    dev_dir: Path
    devices: list[Proc] = field(default_factory=list)
    monitors: list[MonitorProc] = field(default_factory=list)

    def device(self, mode: str, name: str) -> Path:
        link = self.dev_dir / name
        proc = Proc([PY, PTYDEV, mode, str(link)], Env(self.world.tmp).env)
        self.world.procs.append(proc)
        self.devices.append(proc)
        proc.wait_for("ptydev")
        return link

    def connect_args(self) -> dict:
        return {
            "relay": self.world.relay.url,
            "token": self.world.tokens["alice"],
            "home_path": self.desk.home,
        }

    def monitor(self, *args: str) -> MonitorProc:
        """A pipe-mode monitor process; stopped by ``stop_monitors``."""
        proc = MonitorProc(self.desk, ["-a", "lab-pi", "device", "monitor", *args])
        self.monitors.append(proc)
        return proc

    def forward(self, link: Path, *args: str) -> Forward:
        """`device forward -p LINK` on an ephemeral port; stopped with the world."""
        fwd = Forward(self.desk, ["-a", "lab-pi", "device", "forward", "-p", str(link), *args])
        self.world.procs.append(fwd)
        return fwd

    def stop_devices_and_monitors(self) -> None:
        for mon in self.monitors:
            mon.kill()
        for proc in self.devices:
            proc.stop()
        self.monitors.clear()
        self.devices.clear()


class Forward(Proc):
    """A `device forward` process whose notes (stderr) are read with its stdout, line by line."""

    def __init__(self, env: Env, args: list[str]):
        self.args = [PY, "-m", "pio_remote", *args, "--listen", "127.0.0.1:0"]
        self.popen = subprocess.Popen(
            self.args,
            env=env.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert self.popen.stdout is not None
        self.watcher = LineWatcher(self.popen.stdout)
        port = int(self.wait_for(r"as rfc2217://127\.0\.0\.1:(\d+)").group(1))
        self.url = f"rfc2217://127.0.0.1:{port}"
        self.address = ("127.0.0.1", port)

    def mark(self) -> int:
        """Where the output is now: ``wait_for_new`` looks only at lines after it."""
        return len(self.lines)

    def wait_for_new(
        self, pattern: str, mark: int, timeout: float = STARTUP_TIMEOUT
    ) -> re.Match[str]:
        if m := self.watcher.wait_for(pattern, timeout, start=mark):
            return m
        raise AssertionError(
            f"forward never printed /{pattern}/; output: {self.lines[mark:]!r}; "
            f"exit={self.popen.poll()}"
        )


def make_lab(tmp: Path, pair: bool = True) -> tuple[World, Lab]:
    """A relay, alice's agent 'lab-pi' offering ptys under dev/, and her paired desk.

    ``pair=False`` saves two CLI runs: the desk is the agent's own machine
    (same identity), which needs no pairing.
    """
    world = World(tmp)
    try:
        world.relay.start()
        agent_machine = world.machine("lab", "alice")
        desk = world.machine("desk", "alice") if pair else agent_machine
        dev_dir = tmp / "dev"
        dev_dir.mkdir()
        agent = world.start_agent(agent_machine, "lab-pi", "--port-glob", str(dev_dir / "*"))
        if pair:
            world.pair(agent_machine, desk, "lab-pi")
    except BaseException:
        world.close()
        raise
    return world, Lab(world, desk, agent, dev_dir)


def line_speed(link: Path) -> int:
    """The pty's current output speed as the agent set it (a termios B* constant)."""
    fd = os.open(link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        return termios.tcgetattr(fd)[5]
    finally:
        os.close(fd)


class MonitorProc:
    """A `pio-remote device monitor` in pipe mode, with stdout/stderr collected as they come."""

    def __init__(self, env: Env, args: list[str]):
        self.popen = subprocess.Popen(
            [PY, "-m", "pio_remote", *args],
            env=env.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.out = bytearray()
        self.err = bytearray()
        self._cond = threading.Condition()
        for stream, buf in ((self.popen.stdout, self.out), (self.popen.stderr, self.err)):
            threading.Thread(target=self._drain, args=(stream, buf), daemon=True).start()

    def _drain(self, stream, buf: bytearray) -> None:
        while chunk := os.read(stream.fileno(), 65536):
            with self._cond:
                buf += chunk
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def write(self, data: bytes) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(data)
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.close()

    def wait_for(self, pattern: bytes, *, err: bool = False, timeout: float = 10.0) -> None:
        buf = self.err if err else self.out
        deadline = time.monotonic() + timeout
        with self._cond:
            while not re.search(pattern, bytes(buf)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"monitor never printed {pattern!r} on {'stderr' if err else 'stdout'}; "
                        f"stdout={bytes(self.out)[-2000:]!r} stderr={bytes(self.err)[-2000:]!r} "
                        f"exit={self.popen.poll()}"
                    )
                self._cond.wait(left)

    def wait(self, timeout: float = 15.0) -> int:
        return self.popen.wait(timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
        self.popen.wait(10)
