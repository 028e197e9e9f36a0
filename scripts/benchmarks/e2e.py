"""`scripts/bench e2e`: throughput and round-trip time through relay + Noise, against OpenSSH.

What a user feels of pio-remote is a byte stream to a board: an upload (bulk,
client to agent), a serial monitor (small messages both ways) and log capture
(bulk, agent to client). OpenSSH is the tool people would otherwise tunnel
through, so it is the bar, measured in the same run on the same machine:

- client->agent throughput: ``diag.sink`` vs ``ssh host 'cat > /dev/null'`` fed the
  same bytes (target >= 0.8x OpenSSH);
- round trip of a 64-byte message: ``diag.echo`` vs ``ssh host cat``, same count
  (for information: three Python processes cannot come near one C program);
- agent->client throughput: ``diag.source`` vs ``ssh host 'head -c N /dev/zero'``
  (for information).

In the same run it measures a floor (``_floor.py``): three bare trio processes,
client -> forwarder -> server -> forwarder -> client over loopback TCP, with no
WebSocket and no Noise. Ratios to the floor show what our own code adds:
targets p50 round trip <= 3x the floor, and total CPU per round trip (relay +
agent + client) <= 700 us.

Without sshd the baseline is raw TCP through a one-hop forwarder instead.
The relay, the agent and this client are separate processes, as in real use.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path
from time import perf_counter
from typing import Any, Protocol, TypeVar

import _floor
import trio
from harness import cpumeter, openssh, rawtcp, rig, stats
from harness.rig import MiB
from harness.stats import AT_LEAST, AT_MOST, Row, Target

from pio_remote.client.api import Client, wait_result

DEFAULT_MIB = 256
# Stream writes are handed to the call in blocks of this size; Call.send cuts
# them into session messages of at most MAX_BODY.
BLOCK = 1 * MiB
MESSAGE_SIZE = 64
RTT_COUNT = 2000
RTT_WARMUP = 200
# A throughput run stops sending after this long, whatever --mib says; the
# baseline is then fed the same number of bytes.
RUN_TIME_LIMIT_S = 30.0
# Hard bound on any single measurement, ours or the baseline's.
PHASE_TIMEOUT_S = 120.0
# An ssh whose remote command is done gets this long to exit before it is killed.
EXIT_TIMEOUT_S = 5.0

THROUGHPUT_TARGET = Target(AT_LEAST, 0.8)
# Against the floor (three bare trio processes): what our own code adds.
FLOOR_RTT_P50_TARGET = Target(AT_MOST, 3.0)
RTT_CPU_TARGET = Target(AT_MOST, 700.0, "us")

AGENT_NAME = "bench-e2e"

T = TypeVar("T")


# ---- baselines ------------------------------------------------------------------------


class Baseline(Protocol):
    name: str

    def sink(self, nbytes: int) -> float:
        """Seconds to push ``nbytes`` through and have the far end confirm the end."""

    def source(self, nbytes: int) -> float:
        """Seconds to receive ``nbytes`` from the far end."""

    def echo(self, count: int, warmup: int) -> list[float]:
        """Round-trip seconds of ``count`` MESSAGE_SIZE-byte messages, after ``warmup``."""


@contextmanager
def watchdog(proc: subprocess.Popen[bytes], timeout: float) -> Iterator[None]:
    """Kill ``proc`` if the block takes longer than ``timeout``: a stuck ssh ends the run."""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()  # the remote command sees EOF and ssh exits
        try:
            proc.wait(EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise RuntimeError("baseline peer closed early")
        data += chunk
    return data


class SshBaseline:
    """OpenSSH to a private sshd; the login is done before the clock starts."""

    def __init__(self, server: openssh.Sshd):
        self.server = server
        self.name = "OpenSSH"

    def _start(self, remote: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            self.server.cmd(f"echo ready; {remote}"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], openssh.SSH_PROBE_TIMEOUT_S)
        if not ready or _read_exactly(proc.stdout.fileno(), 6) != b"ready\n":
            proc.kill()
            raise RuntimeError("ssh did not log in")
        return proc

    def sink(self, nbytes: int) -> float:
        # "done" is the far end's confirmation, like diag.sink's RESULT: the clock
        # stops there, not at ssh's exit, which adds the channel teardown.
        proc = self._start("cat > /dev/null; echo done")
        assert proc.stdin is not None and proc.stdout is not None
        block = memoryview(bytes(BLOCK))
        with watchdog(proc, PHASE_TIMEOUT_S):
            start = perf_counter()
            left = nbytes
            while left:
                n = min(left, BLOCK)
                proc.stdin.write(block[:n])
                left -= n
            proc.stdin.close()
            if _read_exactly(proc.stdout.fileno(), 5) != b"done\n":
                raise RuntimeError("ssh sink did not confirm the end")
            return perf_counter() - start

    def source(self, nbytes: int) -> float:
        proc = self._start(f"exec head -c {nbytes} /dev/zero")
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        with watchdog(proc, PHASE_TIMEOUT_S):
            start = perf_counter()
            got = 0
            while got < nbytes and (chunk := os.read(fd, BLOCK)):
                got += len(chunk)
            elapsed = perf_counter() - start
        if got != nbytes:
            raise RuntimeError(f"ssh source gave {got} of {nbytes} bytes")
        return elapsed

    def echo(self, count: int, warmup: int) -> list[float]:
        proc = self._start("exec cat")
        assert proc.stdin is not None and proc.stdout is not None
        fdin, fdout = proc.stdin.fileno(), proc.stdout.fileno()
        message = bytes(range(MESSAGE_SIZE))
        times = []
        with watchdog(proc, PHASE_TIMEOUT_S):
            for i in range(warmup + count):
                start = perf_counter()
                os.write(fdin, message)
                _read_exactly(fdout, MESSAGE_SIZE)
                if i >= warmup:
                    times.append(perf_counter() - start)
        return times


class TcpBaseline:
    """Raw TCP through a one-hop forwarder: no crypto, no framing (used without sshd)."""

    def __init__(self, server: rawtcp.TcpBaseline):
        self.server = server
        self.name = "TCP+forwarder"

    def sink(self, nbytes: int) -> float:
        block = memoryview(bytes(BLOCK))
        with self.server.connect(rawtcp.TCP_SINK) as sock:
            sock.settimeout(PHASE_TIMEOUT_S)
            start = perf_counter()
            left = nbytes
            while left:
                n = min(left, BLOCK)
                sock.sendall(block[:n])
                left -= n
            sock.shutdown(socket.SHUT_WR)  # the server answers with its count at EOF
            total = int.from_bytes(rawtcp.recv_exactly(sock, 8), "big")
            elapsed = perf_counter() - start
        if total != nbytes:
            raise RuntimeError(f"TCP sink counted {total} of {nbytes} bytes")
        return elapsed

    def source(self, nbytes: int) -> float:
        with self.server.connect(rawtcp.TCP_SOURCE, nbytes) as sock:
            sock.settimeout(PHASE_TIMEOUT_S)
            start = perf_counter()
            got = 0
            while chunk := sock.recv(BLOCK):
                got += len(chunk)
            return perf_counter() - start

    def echo(self, count: int, warmup: int) -> list[float]:
        message = bytes(range(MESSAGE_SIZE))
        times = []
        with self.server.connect(rawtcp.TCP_ECHO) as sock:
            sock.settimeout(PHASE_TIMEOUT_S)
            for i in range(warmup + count):
                start = perf_counter()
                sock.sendall(message)
                rawtcp.recv_exactly(sock, MESSAGE_SIZE)
                if i >= warmup:
                    times.append(perf_counter() - start)
        return times


# ---- ours ---------------------------------------------------------------------------------


async def ours_sink(client: Client, nbytes: int, time_limit: float) -> tuple[int, float]:
    """Bytes sent and seconds until the agent's RESULT confirms it counted them all."""
    block = bytes(BLOCK)
    with trio.fail_after(PHASE_TIMEOUT_S):
        async with client.session(AGENT_NAME) as agent, agent.open_call("diag.sink") as call:
            start = perf_counter()
            deadline = start + time_limit
            sent = 0
            while sent < nbytes and perf_counter() < deadline:
                n = min(BLOCK, nbytes - sent)
                await call.send(block if n == BLOCK else block[:n])
                sent += n
            await call.send_eof()
            counted = await wait_result(call)
            elapsed = perf_counter() - start
    if counted != sent:
        raise RuntimeError(f"diag.sink counted {counted} of {sent} bytes")
    return sent, elapsed


async def ours_source(client: Client, nbytes: int) -> float:
    with trio.fail_after(PHASE_TIMEOUT_S):
        async with (
            client.session(AGENT_NAME) as agent,
            agent.open_call("diag.source", size=nbytes) as call,
        ):
            start = perf_counter()
            got = 0
            while (item := await call.receive()) is not None:
                if isinstance(item, bytes):
                    got += len(item)
            await wait_result(call)
            elapsed = perf_counter() - start
    if got != nbytes:
        raise RuntimeError(f"diag.source gave {got} of {nbytes} bytes")
    return elapsed


async def ours_echo(client: Client, count: int, warmup: int) -> list[float]:
    message = bytes(range(MESSAGE_SIZE))
    times = []
    with trio.fail_after(PHASE_TIMEOUT_S):
        async with client.session(AGENT_NAME) as agent, agent.open_call("diag.echo") as call:
            for i in range(warmup + count):
                start = perf_counter()
                await call.send(message)
                got = 0
                while got < MESSAGE_SIZE:
                    item = await call.receive()
                    if not isinstance(item, bytes):
                        raise RuntimeError(f"diag.echo answered {item!r}")
                    got += len(item)
                if i >= warmup:
                    times.append(perf_counter() - start)
            await call.send_eof()
            await wait_result(call)
    return times


# ---- profiling --------------------------------------------------------------------------

# py-spy from PATH, else from this interpreter's venv (`pip install py-spy`).
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


@asynccontextmanager
async def profiled(pids: dict[str, int], outdir: Path | None, label: str) -> AsyncIterator[None]:
    """Sample each process with py-spy for the block (collapsed stacks in ``outdir``)."""
    if outdir is None:
        yield
        return
    outdir.mkdir(parents=True, exist_ok=True)
    spies = [
        subprocess.Popen(
            [
                PY_SPY,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(outdir / f"{label}-{role}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for role, pid in pids.items()
    ]
    await trio.sleep(1.0)  # let py-spy attach before the measured work starts
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            try:
                spy.wait(20)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()


# ---- main ---------------------------------------------------------------------------------

PHASES = ("sink", "echo", "source")


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


class Run:
    """One benchmark run: the client, the baseline, and what has been measured so far."""

    def __init__(
        self,
        args: argparse.Namespace,
        client: Client,
        baseline: Baseline,
        pids: dict[str, int],
        floor: Floor,
    ):
        self.args = args
        self.client = client
        self.baseline = baseline
        self.pids = pids
        self.floor = floor
        self.nbytes = args.mib * MiB
        self.rows: list[Row] = []
        self.floor_rows: list[Row] = []
        # phase -> role -> CPU cost (ms per MiB, or us per round trip), median over runs
        self.cpu: dict[str, dict[str, float]] = {}
        self.floor_cpu: dict[str, dict[str, float]] = {}

    def profiled(self, label: str) -> AbstractAsyncContextManager[None]:
        return profiled(self.pids, self.args.profile, label)

    async def baseline_run(self, fn: Callable[..., T], *args: int) -> T:
        # The baseline blocks, so it runs in a thread: the client's link keeps
        # answering the relay's keepalive meanwhile.
        return await trio.to_thread.run_sync(fn, *args)

    def keep_cpu(self, phase: str, samples: list[dict[str, float]], floor: bool = False) -> None:
        into = self.floor_cpu if floor else self.cpu
        into[phase] = {role: stats.median([s[role] for s in samples]) for role in samples[0]}

    async def floor_throughput(self, fn: Callable[..., Any], nbytes: int) -> tuple[float, dict]:
        with cpumeter.CpuMeter(self.floor.pids) as meter:
            elapsed = await fn(self.floor.port, nbytes)
        return mbps(nbytes, elapsed), meter.per_unit(nbytes / MiB, 1e3)

    async def sink(self) -> None:
        ours, base, cpu, low, low_cpu = [], [], [], [], []
        for run in range(self.args.repeat):
            async with self.profiled(f"sink{run}"):
                with cpumeter.CpuMeter(self.pids) as meter:
                    sent, elapsed = await ours_sink(self.client, self.nbytes, self.args.time_limit)
            self.nbytes = sent  # a time-limited run sets the size for the rest
            ours.append(mbps(sent, elapsed))
            base.append(mbps(sent, await self.baseline_run(self.baseline.sink, sent)))
            cpu.append(meter.per_unit(sent / MiB, 1e3))
            speed, floor_cpu = await self.floor_throughput(_floor.sink, sent)
            low.append(speed)
            low_cpu.append(floor_cpu)
            print(
                f"  sink   run {run + 1}: {sent / MiB:.0f} MiB, ours {ours[-1]:.1f} MB/s, "
                f"{self.baseline.name} {base[-1]:.1f} MB/s, floor {low[-1]:.1f} MB/s; "
                f"ours CPU ms/MiB: {meter.per(sent / MiB, 1e3)}",
                flush=True,
            )
        self.keep_cpu("sink (ms/MiB)", cpu)
        self.keep_cpu("sink (ms/MiB)", low_cpu, floor=True)
        figure = "client->agent throughput"
        self.rows.append(
            Row(figure, stats.median(ours), "MB/s", stats.median(base), THROUGHPUT_TARGET)
        )
        self.floor_rows.append(Row(figure, stats.median(ours), "MB/s", stats.median(low)))

    async def echo(self) -> None:
        count, warmup = self.args.count, self.args.warmup
        async with self.profiled("echo"):
            with cpumeter.CpuMeter(self.pids) as meter:
                ours = await ours_echo(self.client, count, warmup)
        base = await self.baseline_run(self.baseline.echo, count, warmup)
        with cpumeter.CpuMeter(self.floor.pids) as floor_meter:
            low = await _floor.echo(self.floor.port, count, warmup, MESSAGE_SIZE)
        cpu = meter.per_unit(count + warmup, 1e6)
        self.keep_cpu("echo (us/round trip)", [cpu])
        self.keep_cpu("echo (us/round trip)", [floor_meter.per_unit(count + warmup, 1e6)], True)
        print(
            f"  echo: {count} round trips each after {warmup} warm-up; ours CPU "
            f"us/round trip: {meter.per(count + warmup, 1e6)}; floor: "
            f"{floor_meter.per(count + warmup, 1e6)}",
            flush=True,
        )
        for pct in (50, 99):
            figure = f"64 B round trip p{pct}"
            mine = stats.percentile(ours, pct) * 1e6
            self.rows.append(Row(figure, mine, "us", stats.percentile(base, pct) * 1e6, digits=0))
            target = FLOOR_RTT_P50_TARGET if pct == 50 else None
            floor = stats.percentile(low, pct) * 1e6
            self.floor_rows.append(Row(figure, mine, "us", floor, target, digits=0))
        total = cpu["total"]
        floor_total = self.floor_cpu["echo (us/round trip)"]["total"]
        self.floor_rows.append(
            Row("CPU per round trip", total, "us", floor_total, RTT_CPU_TARGET, digits=0)
        )

    async def source(self) -> None:
        ours, base, cpu, low, low_cpu = [], [], [], [], []
        nbytes = self.nbytes
        for run in range(self.args.repeat):
            async with self.profiled(f"source{run}"):
                with cpumeter.CpuMeter(self.pids) as meter:
                    ours.append(mbps(nbytes, await ours_source(self.client, nbytes)))
            base.append(mbps(nbytes, await self.baseline_run(self.baseline.source, nbytes)))
            cpu.append(meter.per_unit(nbytes / MiB, 1e3))
            speed, floor_cpu = await self.floor_throughput(_floor.source, nbytes)
            low.append(speed)
            low_cpu.append(floor_cpu)
            print(
                f"  source run {run + 1}: ours {ours[-1]:.1f} MB/s, "
                f"{self.baseline.name} {base[-1]:.1f} MB/s, floor {low[-1]:.1f} MB/s; "
                f"ours CPU ms/MiB: {meter.per(nbytes / MiB, 1e3)}",
                flush=True,
            )
        self.keep_cpu("source (ms/MiB)", cpu)
        self.keep_cpu("source (ms/MiB)", low_cpu, floor=True)
        figure = "agent->client throughput"
        self.rows.append(Row(figure, stats.median(ours), "MB/s", stats.median(base)))
        self.floor_rows.append(Row(figure, stats.median(ours), "MB/s", stats.median(low)))


class Floor:
    """The floor's two processes (server and forwarder); this process is its client."""

    def __init__(self, w: rig.World):
        env = rig.child_env()
        script = str(Path(__file__).with_name("_floor.py"))
        server = w.spawn("floor-server", [sys.executable, script, "server"], env)
        backend = server.wait_for(_floor.READY).group(1)
        forwarder = w.spawn("floor-forward", [sys.executable, script, "forward", backend], env)
        self.port = int(forwarder.wait_for(_floor.READY).group(1))
        self.pids = {"forwarder": forwarder.pid, "server": server.pid, "client": os.getpid()}


async def measure(
    args: argparse.Namespace,
    w: rig.World,
    baseline: Baseline,
    pids: dict[str, int],
    floor: Floor,
) -> Run:
    async with Client.connect(w.url, w.token, w.home) as client:
        run = Run(args, client, baseline, pids, floor)
        await ours_echo(client, 50, 0)  # warm up sessions, imports and the agent's handlers
        for phase in PHASES:
            if phase in args.only:
                await getattr(run, phase)()
    return run


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench e2e", description=__doc__.split("\n")[0])
    p.add_argument("--mib", type=int, default=DEFAULT_MIB, help="MiB per throughput run")
    p.add_argument("--repeat", type=int, default=3, help="throughput runs each (median kept)")
    p.add_argument("--count", type=int, default=RTT_COUNT, help="measured round trips")
    p.add_argument("--warmup", type=int, default=RTT_WARMUP, help="unmeasured round trips")
    p.add_argument(
        "--time-limit",
        type=float,
        default=RUN_TIME_LIMIT_S,
        help="seconds after which a throughput run stops sending",
    )
    p.add_argument(
        "--only",
        default=",".join(PHASES),
        help=f"comma-separated phases to run, from {','.join(PHASES)}",
    )
    p.add_argument(
        "--baseline",
        choices=("auto", "ssh", "tcp"),
        default="auto",
        help="OpenSSH (auto: when sshd can run) or raw TCP through a forwarder",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record py-spy collapsed stacks of relay, agent and client per phase",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    p.add_argument("--keep-logs", action="store_true", help="keep relay and agent logs")
    args = p.parse_args(argv)
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    if not args.only or set(args.only) - set(PHASES):
        p.error(f"--only takes phases from {','.join(PHASES)}")
    if args.profile and not Path(PY_SPY).exists():
        p.error("--profile needs py-spy: pip install py-spy")
    if args.mib < 1 or args.repeat < 1 or args.count < 1 or args.warmup < 0:
        p.error("--mib, --repeat and --count must be positive, --warmup not negative")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    machine = stats.machine_line()
    print(f"e2e benchmark: {machine}")
    with rig.world(keep=args.keep_logs) as w, _baseline(args.baseline) as baseline:
        agent = w.start_agent(AGENT_NAME)
        pids = {"relay": w.relay.pid, "agent": agent.pid, "client": os.getpid()}
        cipher = f", cipher {baseline.server.cipher}" if isinstance(baseline, SshBaseline) else ""
        print(f"relay {w.url}; baseline {baseline.name}{cipher}", flush=True)
        floor = Floor(w)
        run = trio.run(measure, args, w, baseline, pids, floor)
    ok = stats.print_table("e2e: relay + Noise vs " + baseline.name, baseline.name, run.rows)
    ok = stats.print_table("e2e: relay + Noise vs the floor", "floor", run.floor_rows) and ok
    for label, table in (("ours", run.cpu), ("floor", run.floor_cpu)):
        print(f"\n  {label}, CPU per unit (median):")
        for phase, roles in table.items():
            print(f"    {phase:22s} " + ", ".join(f"{r} {v:.2f}" for r, v in roles.items()))
    print(f"  (at the end: {stats.load_line()})")
    if args.json:
        stats.write_json(
            args.json,
            "e2e",
            machine,
            [*run.rows, *(replace(r, figure=f"{r.figure} vs floor") for r in run.floor_rows)],
            {"cpu": run.cpu, "floor_cpu": run.floor_cpu, "baseline": baseline.name + cipher},
        )
    if args.profile:
        print(f"\npy-spy stacks in {args.profile}")
    return 1 if args.check and not ok else 0


@contextmanager
def _baseline(kind: str) -> Iterator[Baseline]:
    if kind in ("auto", "ssh"):
        with openssh.sshd() as server:
            if server is not None:
                yield SshBaseline(server)
                return
            if kind == "ssh":
                raise SystemExit("--baseline ssh: sshd is not usable here")
    with rawtcp.tcp_baseline() as tcp:
        yield TcpBaseline(tcp)
