"""Shared setup for `scripts/bench`: processes, an OpenSSH baseline, percentiles, results.

Every benchmark compares against a baseline measured in the same run on the same
machine, so a ratio still means something on a busy or slow machine. The pieces:

- ``World``: a relay, an account and agents as real processes (as users run
  them), with a client home shared with the agents so no pairing is needed.
- ``sshd()``: a private OpenSSH server on a free 127.0.0.1 port, or ``None``
  when this machine cannot run one; ``tcp_baseline()`` is the fallback.
- ``CpuMeter``: CPU seconds each process spent in a block, which moves far less
  with other people's load than wall-clock figures do.
- ``percentile()``, ``Row``, ``Target``, ``print_table()`` and ``write_json()``:
  one way to compute, show and keep results.

Everything here is bounded in time, talks to 127.0.0.1 only, and is cleaned
up in ``finally`` blocks, even when a benchmark fails half-way.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from proctools import Proc, raise_nofile  # noqa: E402, F401  (raise_nofile: for benchmarks)

LOCALHOST = "127.0.0.1"

# A relay, agent or sshd that is not up within this time is broken, not slow.
STARTUP_TIMEOUT_S = 20.0
# One ssh invocation used as a probe (login and `true`).
SSH_PROBE_TIMEOUT_S = 15.0
SSHD = "/usr/sbin/sshd"

MiB = 1024 * 1024


# ---- processes ----------------------------------------------------------------------


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


# ---- relay, account, agents -----------------------------------------------------------


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


# ---- OpenSSH baseline ------------------------------------------------------------------


@dataclass
class Sshd:
    """A private sshd on 127.0.0.1; ``cmd()`` builds an ssh command line that logs in to it."""

    port: int
    key: Path
    cipher: str = "?"

    def options(self) -> list[str]:
        """Key and options for ssh or scp (port and host not included: scp spells -P)."""
        return [
            "-i",
            str(self.key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "IdentitiesOnly=yes",
            "-F",
            "/dev/null",  # no user or system ssh_config: the same options everywhere
        ]

    def cmd(self, *remote: str) -> list[str]:
        """``ssh -p PORT <options> 127.0.0.1 REMOTE...``."""
        return ["ssh", "-p", str(self.port), *self.options(), LOCALHOST, *remote]


SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_ed25519
AuthorizedKeysFile {dir}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PidFile none
PrintMotd no
UseDNS no
"""


def sshd_missing() -> str:
    """Why this machine cannot run the OpenSSH baseline, or "" if it can."""
    for tool in (SSHD, "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    return ""


@contextmanager
def sshd(attempts: int = 3) -> Iterator[Sshd | None]:
    """A private foreground sshd with throwaway keys; yields None (and says why) if unusable."""
    why = sshd_missing()
    if why:
        print(f"(OpenSSH baseline unavailable: {why})")
        yield None
        return
    tmp = Path(tempfile.mkdtemp(prefix="pio-bench-sshd-"))
    procs: list[Proc] = []
    try:
        server = _start_sshd(tmp, attempts, procs)
        yield server
    finally:
        for proc in procs:
            proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _start_sshd(tmp: Path, attempts: int, procs: list[Proc]) -> Sshd | None:
    """Keys, config and a running sshd in ``tmp``; started processes go into ``procs``."""
    try:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir
        for name in ("host_ed25519", "client_ed25519"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)],
                check=True,
                timeout=SSH_PROBE_TIMEOUT_S,
                capture_output=True,
            )
        shutil.copy(tmp / "client_ed25519.pub", tmp / "authorized_keys")
        for _ in range(attempts):  # a free port may be taken before sshd binds it
            port = free_port()
            config = tmp / "sshd_config"
            config.write_text(SSHD_CONFIG.format(port=port, dir=tmp))
            proc = Proc([SSHD, "-D", "-e", "-f", str(config)], child_env())  # stderr watched
            procs.append(proc)
            server = Sshd(port, tmp / "client_ed25519")
            if _sshd_ready(proc, server):
                return server
            print(f"(sshd on port {port} failed: {proc.stderr_tail(500).strip()})")
            proc.stop()
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"(OpenSSH baseline unavailable: {exc})")
        return None
    print("(OpenSSH baseline unavailable: sshd did not start)")
    return None


def _sshd_ready(proc: Proc, server: Sshd) -> bool:
    """Wait for sshd to listen, then log in once; also learn the cipher ssh picked."""
    assert proc.err is not None
    if not proc.err.wait_for("Server listening", STARTUP_TIMEOUT_S):
        return False  # it exited, or never listened
    probe = subprocess.run(
        ["ssh", "-v", "-p", str(server.port), *server.options(), LOCALHOST, "true"],
        capture_output=True,
        text=True,
        timeout=SSH_PROBE_TIMEOUT_S,
    )
    if probe.returncode != 0:
        return False
    if m := re.search(r"kex: server->client cipher: (\S+)", probe.stderr):
        server.cipher = m.group(1)
    return True


# ---- raw TCP baseline (when sshd is unavailable) -----------------------------------------

# Modes of the fallback server, sent as the first byte of a connection.
TCP_SINK, TCP_ECHO, TCP_SOURCE = b"s", b"e", b"o"
TCP_BLOCK = 256 * 1024


@dataclass
class TcpBaseline:
    """A forwarder in front of a sink/echo/source server, both in one child process."""

    port: int
    proc: Proc = field(repr=False)

    def connect(self, mode: bytes, arg: int = 0) -> socket.socket:
        sock = socket.create_connection((LOCALHOST, self.port), timeout=STARTUP_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(mode + arg.to_bytes(8, "big"))
        return sock


@contextmanager
def tcp_baseline() -> Iterator[TcpBaseline]:
    """Raw TCP through one forwarding hop: what a relay costs with no crypto and no framing."""
    tmp = Path(tempfile.mkdtemp(prefix="pio-bench-tcp-"))
    proc = Proc([PY, str(Path(__file__).resolve()), "tcp-baseline"], child_env(), tmp / "tcp.log")
    try:
        port = int(proc.wait_for(r"forwarder on (\d+)").group(1))
        yield TcpBaseline(port, proc)
    finally:
        proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _serve_backend(conn: socket.socket) -> None:
    with conn:
        head = recv_exactly(conn, 9)
        mode, arg = head[:1], int.from_bytes(head[1:], "big")
        if mode == TCP_SINK:
            total = 0
            while chunk := conn.recv(TCP_BLOCK):
                total += len(chunk)
            conn.sendall(total.to_bytes(8, "big"))
        elif mode == TCP_ECHO:
            while chunk := conn.recv(TCP_BLOCK):
                conn.sendall(chunk)
        elif mode == TCP_SOURCE:
            block = bytes(TCP_BLOCK)
            view = memoryview(block)
            while arg:
                n = min(arg, TCP_BLOCK)
                conn.sendall(view[:n])
                arg -= n


def recv_exactly(conn: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes from a blocking socket, for the raw TCP baselines."""
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed early")
        data += chunk
    return data


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(TCP_BLOCK):
            dst.sendall(chunk)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _forward(client: socket.socket, backend_port: int) -> None:
    with client, socket.create_connection((LOCALHOST, backend_port)) as backend:
        for sock in (client, backend):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=_pipe, args=(backend, client), daemon=True)
        back.start()
        _pipe(client, backend)
        back.join()


def _serve(listener: socket.socket, handler: Callable[..., None], *args: object) -> None:
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handler, args=(conn, *args), daemon=True).start()


def run_tcp_baseline(lifetime: float = 600.0) -> None:
    """Child process body: backend and forwarder threads; exits by itself after ``lifetime``."""
    backend = socket.create_server((LOCALHOST, 0))
    front = socket.create_server((LOCALHOST, 0))
    threading.Thread(target=_serve, args=(backend, _serve_backend), daemon=True).start()
    threading.Thread(
        target=_serve, args=(front, _forward, backend.getsockname()[1]), daemon=True
    ).start()
    print(f"forwarder on {front.getsockname()[1]}", flush=True)
    time.sleep(lifetime)


# ---- CPU accounting ----------------------------------------------------------------------


class CpuMeter:
    """CPU seconds (user + system) each process used inside a ``with`` block.

    On a shared 2-core machine wall-clock figures move with other people's load;
    CPU per byte or per round trip does not, so it shows where the cost is.
    """

    def __init__(self, pids: dict[str, int]):
        import psutil  # test extra; only benchmarks need it

        self._procs = {role: psutil.Process(pid) for role, pid in pids.items()}
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        out = {}
        for role, proc in self._procs.items():
            times = proc.cpu_times()
            out[role] = times.user + times.system
        return out

    def __enter__(self) -> CpuMeter:
        self._start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        self.used = {role: end[role] - self._start[role] for role in end}

    def per_unit(self, amount: float, scale: float = 1.0) -> dict[str, float]:
        """CPU time per ``amount`` units, times ``scale``, for each role and in total."""
        out = {role: used / amount * scale for role, used in self.used.items()}
        out["total"] = sum(out.values())
        return out

    def per(self, amount: float, scale: float = 1.0) -> str:
        """The same as ``per_unit``, as text: ``relay 1.23, agent ..., total ...``."""
        return ", ".join(f"{r} {v:.2f}" for r, v in self.per_unit(amount, scale).items())


# ---- statistics and results ----------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct``-th percentile (0-100) with linear interpolation, like numpy's default."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


AT_LEAST = ">="
AT_MOST = "<="


@dataclass(frozen=True)
class Target:
    """A pass mark. On ours/baseline by default (``>= 1x`` throughput, ``<= 2x`` latency);
    with a ``unit`` it is an absolute limit on the figure itself (``<= 40 KiB``)."""

    op: str  # AT_LEAST or AT_MOST
    limit: float
    unit: str = ""  # "" for a ratio to the baseline

    @property
    def on_ratio(self) -> bool:
        return not self.unit

    def met(self, x: float) -> bool:
        return x >= self.limit if self.op == AT_LEAST else x <= self.limit

    def __str__(self) -> str:
        return f"{self.op} {self.limit:g}" + (f" {self.unit}" if self.unit else "x")


@dataclass(frozen=True)
class Row:
    """One line of a results table. ``baseline=None`` or ``target=None`` means "for information"."""

    figure: str
    value: float
    unit: str
    baseline: float | None = None
    target: Target | None = None
    digits: int = 1

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        measured = self.ratio if self.target.on_ratio else self.value
        return None if measured is None else self.target.met(measured)


def print_table(title: str, baseline_name: str, rows: Sequence[Row]) -> bool:
    """Print figures, baseline, ratio, target and PASS/FAIL; True if no target was missed."""

    def fmt(x: float, row: Row) -> str:
        return f"{x:,.{row.digits}f} {row.unit}"

    table = [("figure", "ours", baseline_name, "ratio", "target", "result")]
    for row in rows:
        ratio = row.ratio
        passed = row.passed
        table.append(
            (
                row.figure,
                fmt(row.value, row),
                fmt(row.baseline, row) if row.baseline is not None else "-",
                f"{ratio:.2f}x" if ratio is not None else "-",
                str(row.target) if row.target else "-",
                {True: "PASS", False: "FAIL", None: "info"}[passed],
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    print(f"\n{title}")
    for i, cells in enumerate(table):
        print(
            "  "
            + "  ".join(
                c.ljust(w) if j == 0 else c.rjust(w)
                for j, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))
    return all(row.passed is not False for row in rows)


def write_json(
    path: Path, name: str, machine: str, rows: Sequence[Row], extra: dict[str, object]
) -> None:
    """Results as JSON, for comparing runs over time or across branches."""
    data = {
        "benchmark": name,
        "machine": machine,
        "rows": [
            {
                "figure": r.figure,
                "value": r.value,
                "unit": r.unit,
                "baseline": r.baseline,
                "ratio": r.ratio,
                "target": str(r.target) if r.target else None,
                "passed": r.passed,
            }
            for r in rows
        ],
        **extra,
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def machine_line() -> str:
    """Date, CPU count and model, Python, load: printed above results so runs can be compared."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores ({model}), "
        f"Python {sys.version.split()[0]}, {load_line()}"
    )


def load_line() -> str:
    """The 1-minute load average: on a shared 2-core machine it says how far to trust a run."""
    try:
        return f"load {os.getloadavg()[0]:.2f}"
    except OSError:
        return "load ?"


if __name__ == "__main__":
    if sys.argv[1:] == ["tcp-baseline"]:
        run_tcp_baseline()
    else:
        sys.exit("usage: harness.py tcp-baseline")


async def serve_echo_runs(count: int, measure: Callable[..., Any]) -> None:
    """The echo drivers' control loop: each ``run SECONDS`` line on stdin runs
    ``measure(index, seconds, rtts)`` for every session at once and prints the round
    trips as one ``rtts [...]`` line (µs); any other line, or the end of stdin, returns."""
    import trio

    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    pending = b""
    while chunk := await stdin.receive_some(1024):
        *commands, pending = (pending + chunk).split(b"\n")
        for command in commands:
            verb, _, arg = command.decode().partition(" ")
            if verb != "run":
                return
            rtts: list[float] = []
            async with trio.open_nursery() as runs:
                for index in range(count):
                    runs.start_soon(measure, index, float(arg), rtts)
            print("rtts " + json.dumps([round(x * 1e6, 1) for x in rtts]), flush=True)
