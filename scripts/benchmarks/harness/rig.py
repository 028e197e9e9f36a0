"""The processes a benchmark runs: a relay, one account and its agents, as users run them."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

PY = sys.executable
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from proctools import Proc, raise_nofile  # noqa: E402, F401  (raise_nofile: for benchmarks)

LOCALHOST = "127.0.0.1"

# A relay, agent or sshd that is not up within this time is broken, not slow.
STARTUP_TIMEOUT_S = 20.0

MiB = 1024 * 1024


def child_env(home: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment for a child: this tree's code first, no stray PIO_REMOTE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIO_REMOTE_")}
    paths = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    if home is not None:
        env["PIO_REMOTE_HOME"] = str(home)
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller retries if it is taken later)."""
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


class World:
    """A relay, one account and its agents, all real processes; ``close()`` stops them.

    The client side (the benchmark itself) uses ``home`` too: an agent running with
    the client's own identity needs no pairing.
    """

    def __init__(self, workdir: Path, *, nofile: int = 0, relay_args: Sequence[str] = ()):
        self.workdir = workdir
        self.home = workdir / "home"
        self.home.mkdir(mode=0o700, exist_ok=True)
        self.data_dir = workdir / "relay-data"
        self.procs: list[Proc] = []
        try:
            self._start_relay(nofile, relay_args)
        except BaseException:
            self.close()  # the caller never gets this World to close
            raise

    def _start_relay(self, nofile: int, relay_args: Sequence[str]) -> None:
        # /metrics asks for a bearer token (docs/relay.md); metrics_request() sends it.
        self.metrics_token = secrets.token_hex(16)
        token_file = self.workdir / "metrics-token"
        token_file.touch(mode=0o600)
        token_file.write_text(self.metrics_token)
        relay_args = [*relay_args, "--metrics-token-file", str(token_file)]
        self.relay_env = child_env(self.workdir / "relay-home")
        self.relay_argv = [
            PY,
            "-m",
            "pio_remote",
            "relay",
            "serve",
            "--bind",
            f"{LOCALHOST}:0",
            "--data-dir",
            str(self.data_dir),
            "--log-level",
            "warning",
            *relay_args,
        ]
        self.relay = self.spawn("relay", self.relay_argv, self.relay_env, nofile=nofile)
        self.url = self.relay.wait_for(r"relay listening on (wss?://\S+)").group(1)
        self.token = self.add_user("bench")

    def restart_relay(self) -> None:
        """Start the relay again on its port (after a stop or a kill), with its data."""
        port = self.url.rsplit(":", 1)[1]
        argv = [a if a != f"{LOCALHOST}:0" else f"{LOCALHOST}:{port}" for a in self.relay_argv]
        self.relay = self.spawn("relay", argv, self.relay_env)
        self.relay.wait_for(r"relay listening on")

    def metrics_request(self) -> urllib.request.Request:
        """A GET of the relay's /metrics, with its token."""
        port = self.url.rsplit(":", 1)[1]
        return urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics",
            headers={"Authorization": f"Bearer {self.metrics_token}"},
        )

    def spawn(
        self,
        label: str,
        args: list[str],
        env: dict[str, str],
        nofile: int = 0,
        stdin: bool = False,
    ) -> Proc:
        """Start a process that ``close()`` stops; its stderr goes to ``<label>.log``."""
        proc = Proc(args, env, self.workdir / f"{label}.log", nofile=nofile, stdin=stdin)
        self.procs.append(proc)
        return proc

    def add_user(self, name: str) -> str:
        """Create an account on the relay; returns its token."""
        result = subprocess.run(
            [
                PY,
                "-m",
                "pio_remote",
                "relay",
                "user",
                "add",
                name,
                "--data-dir",
                str(self.data_dir),
            ],
            env=child_env(self.workdir / "relay-home"),
            capture_output=True,
            text=True,
            timeout=STARTUP_TIMEOUT_S,
            check=True,
        )
        return result.stdout.strip().splitlines()[-1]

    def client_env(self) -> dict[str, str]:
        return child_env(self.home, PIO_REMOTE_RELAY=self.url, PIO_REMOTE_AUTH_TOKEN=self.token)

    def start_agent(self, name: str, *args: str, home: Path | None = None) -> Proc:
        """``pio-remote agent start -n NAME`` with the client's home (or ``home``, which
        holds the client's identity: an agent.toml of its own); waits until online."""
        env = self.client_env()
        if home is not None:
            env["PIO_REMOTE_HOME"] = str(home)
        level = os.environ.get("BENCH_AGENT_LOG", "warning")
        argv = [PY, "-m", "pio_remote", "agent", "start", "-n", name, "--log-level", level]
        proc = self.spawn(f"agent-{name}", [*argv, *args], env)
        proc.wait_for(r"agent \S+ online")
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@contextmanager
def world(
    *, nofile: int = 0, relay_args: Sequence[str] = (), keep: bool = False
) -> Iterator[World]:
    """A World in a temp directory, torn down (processes and files) on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix="pio-bench-"))
    w: World | None = None
    try:
        w = World(workdir, nofile=nofile, relay_args=relay_args)
        yield w
    finally:
        if w is not None:
            w.close()
        if keep:
            print(f"(logs kept in {workdir})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
