"""Helpers for monitor and forward tests: a lab world, pty devices, a live monitor process."""

from __future__ import annotations

import os
import re
import signal
import termios
from dataclasses import dataclass, field
from pathlib import Path

from conftest import PY, Env, Proc, World
from proctools import STARTUP_TIMEOUT

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
        cmd = [PY, "-m", "pio_remote", *args, "--listen", "127.0.0.1:0"]
        super().__init__(cmd, env.env, merge_stderr=True)
        port = int(self.wait_for(r"as rfc2217://127\.0\.0\.1:(\d+)").group(1))
        self.url = f"rfc2217://127.0.0.1:{port}"
        self.address = ("127.0.0.1", port)

    def mark(self) -> int:
        """Where the output is now: ``wait_for_new`` looks only at lines after it."""
        return len(self.lines)

    def wait_for_new(
        self, pattern: str, mark: int, timeout: float = STARTUP_TIMEOUT
    ) -> re.Match[str]:
        return self.wait_for(pattern, timeout, start=mark)


# The agent's grace period for a lost monitor in these labs: long enough for any
# outage a test makes, short enough that a test can wait it out.
LAB_GRACE = 4


def make_lab(
    tmp: Path, pair: bool = True, agent_toml: str = "", serial_backend: str | None = None
) -> tuple[World, Lab]:
    """A relay, alice's agent 'lab-pi' offering ptys under dev/, and her paired desk.

    ``pair=False`` saves two CLI runs: the desk is the agent's own machine
    (same identity), which needs no pairing. ``agent_toml`` is added to the
    agent's agent.toml (which sets ``monitor_grace_seconds`` to ``LAB_GRACE``).
    ``serial_backend`` is the agent's.
    """
    world = World(tmp)
    world.serial_backend = serial_backend
    try:
        world.relay.start()
        agent_machine = world.machine("lab", "alice")
        desk = world.machine("desk", "alice") if pair else agent_machine
        dev_dir = tmp / "dev"
        dev_dir.mkdir()
        config = f"monitor_grace_seconds = {LAB_GRACE}\n{agent_toml}"
        (agent_machine.home / "agent.toml").write_text(config)
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


class MonitorProc(Proc):
    """A `pio-remote device monitor` in pipe mode, with stdout/stderr collected as they come."""

    def __init__(self, env: Env, args: list[str]):
        super().__init__([PY, "-m", "pio_remote", *args], env.env, stdin=True)

    def wait_for(self, pattern: bytes, *, err: bool = False, timeout: float = 10.0) -> None:  # type: ignore[override]
        self.wait_for_bytes(pattern, err=err, timeout=timeout)

    def wait(self, timeout: float = 15.0) -> int:
        return self.popen.wait(timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.stop(sig)
