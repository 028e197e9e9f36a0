"""Fixtures that start real processes: relay, agents, demo boards, CLI runs.

Every process fixture kills what it started, even when the test fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import piocore
import pytest
from hypothesis import settings
from proctools import Proc

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent

# Speed is measured by scripts/bench, not by tests: a loaded CI machine must not turn
# hypothesis's per-example deadline into a failure.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")


@dataclass
class Env:
    """A machine identity: a PIO_REMOTE_HOME and the environment to run commands in."""

    home: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIO_REMOTE_")}
        env["PIO_REMOTE_HOME"] = str(self.home)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra)
        return env

    def cli(self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None):
        result = subprocess.run(
            [PY, "-m", "pio_remote", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"pio-remote {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result


class Relay:
    def __init__(self, data_dir: Path, env: dict[str, str], procs: list[Proc]):
        self.data_dir = data_dir
        self.env = env
        self.procs = procs
        self.proc: Proc | None = None
        self.port = 0
        self.url = ""

    def start(self, port: int = 0, extra: tuple[str, ...] = ()) -> None:
        args = [
            PY,
            "-m",
            "pio_remote",
            "relay",
            "serve",
            "--bind",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(self.data_dir),
            *extra,
        ]
        self.proc = Proc(args, self.env)
        self.procs.append(self.proc)
        m = self.proc.wait_for(r"relay listening on (wss?://127\.0\.0\.1:(\d+))")
        self.url, self.port = m.group(1), int(m.group(2))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PY, "-m", "pio_remote", "relay", *args, "--data-dir", str(self.data_dir)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    def add_user(self, name: str) -> str:
        return self.admin("user", "add", name).stdout.strip()


class World:
    """Relay, accounts, homes, agents and boards for one test; all torn down after."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.relay = Relay(tmp / "relay-data", Env(tmp / "relay-home").env, self.procs)
        self.tokens: dict[str, str] = {}
        # Agents started here read ports with this backend (agent/serial/backend.py);
        # None: the agent's own choice (fd on Linux). See the serial_backend fixture.
        self.serial_backend: str | None = None

    def account(self, name: str) -> str:
        if name not in self.tokens:
            self.tokens[name] = self.relay.add_user(name)
        return self.tokens[name]

    def machine(self, label: str, account: str) -> Env:
        """A home logged in to the relay as ``account`` via the CI environment variables."""
        home = self.tmp / f"home-{label}"
        home.mkdir(exist_ok=True)
        return Env(
            home,
            {"PIO_REMOTE_RELAY": self.relay.url, "PIO_REMOTE_AUTH_TOKEN": self.account(account)},
        )

    def spawn(self, args: list[str], env: dict[str, str]) -> Proc:
        """Any other process of the test; stopped with the rest."""
        proc = Proc(args, env)
        self.procs.append(proc)
        return proc

    def start_agent(self, machine: Env, name: str, *args: str) -> Proc:
        if self.serial_backend is not None:
            args = ("--serial-backend", self.serial_backend, *args)
        proc = Proc([PY, "-m", "pio_remote", "agent", "start", "-n", name, *args], machine.env)
        self.procs.append(proc)
        proc.wait_for(r"agent \S+ online")
        if self.serial_backend is not None:  # logged before "online"
            said = f"serial ports: {self.serial_backend} backend"
            assert said in proc.stderr_tail(100_000), proc.stderr_tail()
        return proc

    def board(self, link: Path) -> Proc:
        proc = Proc([PY, "-m", "pio_remote.vboard.demo_board", str(link)], Env(self.tmp).env)
        self.procs.append(proc)
        proc.wait_for("demo board")
        return proc

    def pair(self, agent_machine: Env, client: Env, agent_name: str) -> None:
        invite = agent_machine.cli("agent", "invite", "-n", agent_name).stdout.strip()
        client.cli("agent", "pair", invite)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    w.relay.start()
    try:
        yield w
    finally:
        w.close()


SERIAL_BACKENDS = ["fd", "thread"]


@pytest.fixture(params=SERIAL_BACKENDS)
def serial_backend(request: pytest.FixtureRequest, world: World) -> str:
    """The test runs once per agent serial backend; its agents use that one."""
    world.serial_backend = request.param
    return request.param


@pytest.fixture(scope="session")
def platformio(tmp_path_factory: pytest.TempPathFactory) -> piocore.PlatformIO:
    """Real PlatformIO Core with an offline core directory (tests/piocore.py), built once."""
    why = piocore.available()
    if why is not None:
        pytest.skip(why)
    return piocore.build_core(tmp_path_factory.mktemp("platformio"))
