"""`scripts/bench forward`: `device forward --tcp` against `ssh -L` and the three-hop floor.

Remote debugging is a TCP connection from gdb to a GDB server next to the
board. People tunnel it with ``ssh -L`` today, so that is the bar, set up in the
same run on the same machine (a private sshd from ``openssh.sshd()``). The
same backend (``harness.rawtcp``'s sink/echo/source server) sits behind three paths:

    ours   bench -> pio-remote device forward --tcp -> relay -> agent -> backend
    ssh    bench -> ssh -L -> sshd -> backend
    floor  bench -> hop -> hop -> hop -> backend      (floor.floor_chain: bare trio)

Figures and targets:
- throughput, bench -> backend and back (target >= 0.55x ``ssh -L``);
- round trip of 64 bytes, p50 and p99 (target: p50 <= 3x the floor; ssh for information);
- gdb: ``x/16384xw`` (64 KiB of target memory) from QEMU's gdbstub on a virtual
  board, through the forward against gdb connected straight to the stub (ratio
  for information), timed inside gdb, plus the whole ``gdb -batch`` run.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

import floor
from harness import cpumeter, openssh, rawtcp, rig, stats
from harness.rig import MiB
from harness.stats import AT_LEAST, AT_MOST, Row, Target

from pio_remote.vboard import FIRMWARE_DEBUG, BoardFarm

AGENT_NAME = "bench-fwd"
BLOCK = 1 * MiB
MESSAGE_SIZE = 64
PHASE_TIMEOUT_S = 120.0
# One gdb run: 16,384 round trips per read take ~10 s through the forward on a
# loaded 2-core machine; a run that takes this long is broken, not slow.
GDB_TIMEOUT_S = 300.0
THROUGHPUT_TARGET = Target(AT_LEAST, 0.55)
RTT_P50_FLOOR_TARGET = Target(AT_MOST, 3.0)
GDB_READ = "x/16384xw 0x20000000"  # 64 KiB: all of the LM3S6965's SRAM
GDB_SCRIPT = """\
import time, gdb
times = []
for _ in range({repeat}):
    start = time.perf_counter()
    gdb.execute("{read}", to_string=True)
    times.append(time.perf_counter() - start)
print("READ-TIMES " + " ".join("%.6f" % t for t in times))
"""


@dataclass
class Path_:
    """One way to reach the backend: a name and a local port that leads to it."""

    name: str
    port: int

    def connect(self, mode: bytes, arg: int = 0) -> socket.socket:
        sock = socket.create_connection((rig.LOCALHOST, self.port), timeout=PHASE_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(mode + arg.to_bytes(8, "big"))
        return sock

    def sink(self, nbytes: int) -> float:
        block = memoryview(bytes(BLOCK))
        with self.connect(rawtcp.TCP_SINK) as sock:
            start = perf_counter()
            left = nbytes
            while left:
                n = min(left, BLOCK)
                sock.sendall(block[:n])
                left -= n
            sock.shutdown(socket.SHUT_WR)
            total = int.from_bytes(rawtcp.recv_exactly(sock, 8), "big")
            elapsed = perf_counter() - start
        if total != nbytes:
            raise RuntimeError(f"{self.name}: the sink counted {total} of {nbytes} bytes")
        return elapsed

    def source(self, nbytes: int) -> float:
        with self.connect(rawtcp.TCP_SOURCE, nbytes) as sock:
            start = perf_counter()
            got = 0
            while got < nbytes and (chunk := sock.recv(BLOCK)):
                got += len(chunk)
            elapsed = perf_counter() - start
        if got != nbytes:
            raise RuntimeError(f"{self.name}: the source gave {got} of {nbytes} bytes")
        return elapsed

    def echo(self, count: int, warmup: int) -> list[float]:
        message = bytes(range(MESSAGE_SIZE))
        times = []
        with self.connect(rawtcp.TCP_ECHO) as sock:
            for i in range(warmup + count):
                start = perf_counter()
                sock.sendall(message)
                rawtcp.recv_exactly(sock, MESSAGE_SIZE)
                if i >= warmup:
                    times.append(perf_counter() - start)
        return times


# ---- the processes -------------------------------------------------------------------------


@contextmanager
def backend() -> Iterator[int]:
    """harness.rawtcp's sink/echo/source server alone, in its own process; yields its port."""
    tmp = Path(tempfile.mkdtemp(prefix="pio-bench-backend-"))
    proc = rig.Proc(
        [rig.PY, str(Path(__file__).resolve()), "backend"], rig.child_env(), tmp / "log"
    )
    try:
        yield int(proc.wait_for(r"backend on (\d+)").group(1))
    finally:
        proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def start_forward(w: rig.World, label: str, target: str) -> tuple[rig.Proc, int]:
    proc = w.spawn(
        label,
        [rig.PY, "-m", "pio_remote", "-a", AGENT_NAME, "device", "forward", "--tcp", target]
        + ["--listen", f"{rig.LOCALHOST}:0"],
        w.client_env(),
    )
    return proc, int(proc.wait_for(r"Forwarding 127\.0\.0\.1:(\d+) to ").group(1))


def start_ssh_l(w: rig.World, server: openssh.Sshd, target_port: int) -> int:
    """``ssh -N -L LOCAL:127.0.0.1:TARGET`` to the private sshd; returns LOCAL once it accepts."""
    local = rig.free_port()
    w.spawn(
        "ssh-L",
        ["ssh", "-p", str(server.port), *server.options(), "-N", "-o", "ExitOnForwardFailure=yes"]
        + ["-L", f"{local}:{rig.LOCALHOST}:{target_port}", rig.LOCALHOST],
        rig.child_env(),
    )
    # ssh -L says nothing when it is ready: try to connect until it accepts.
    deadline = time.monotonic() + rig.STARTUP_TIMEOUT_S
    while True:
        try:
            socket.create_connection((rig.LOCALHOST, local), timeout=1).close()
            return local
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("ssh -L did not start listening") from None
            time.sleep(0.05)


# ---- phases ----------------------------------------------------------------------------------


def best_of(repeat: int, fn: Callable[[], float]) -> float:
    return stats.median([fn() for _ in range(repeat)])


def transfer_rows(args: argparse.Namespace, ours: Path_, ssh: Path_ | None, meter: dict) -> list:
    rows = []
    nbytes = args.mib * MiB
    for phase, label in (("sink", "bench->backend"), ("source", "backend->bench")):
        times = {}
        for path in filter(None, (ours, ssh)):
            with cpumeter.CpuMeter(meter) if path is ours else _nothing() as cpu:
                run = getattr(path, phase)
                times[path.name] = best_of(args.repeat, lambda run=run: run(nbytes))
            if path is ours and cpu is not None:
                print(f"  ours {label}, CPU ms per MiB: {cpu.per(args.mib * args.repeat, 1e3)}")
        mbps = {name: nbytes / t / 1e6 for name, t in times.items()}
        print(f"  {label}: " + ", ".join(f"{n} {v:.1f} MB/s" for n, v in mbps.items()), flush=True)
        rows.append(
            Row(
                f"throughput {label}",
                mbps["ours"],
                "MB/s",
                mbps.get("ssh -L"),
                THROUGHPUT_TARGET if "ssh -L" in mbps else None,
            )
        )
    return rows


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def rtt_rows(args: argparse.Namespace, paths: list[Path_], meter: dict) -> list[Row]:
    p50: dict[str, float] = {}
    p99: dict[str, float] = {}
    for path in paths:
        with cpumeter.CpuMeter(meter) if path.name == "ours" else _nothing() as cpu:
            times = path.echo(args.count, args.warmup)
        p50[path.name] = stats.percentile(times, 50) * 1e6
        p99[path.name] = stats.percentile(times, 99) * 1e6
        if cpu is not None:
            print(f"  ours round trip, CPU us each: {cpu.per(args.count + args.warmup, 1e6)}")
    print("  round trip p50: " + ", ".join(f"{n} {v:.0f} us" for n, v in p50.items()), flush=True)
    rows = [
        Row("64 B round trip p50 vs floor", p50["ours"], "us", p50["floor"], RTT_P50_FLOOR_TARGET),
        Row("64 B round trip p99 vs floor", p99["ours"], "us", p99["floor"]),
    ]
    if "ssh -L" in p50:
        rows += [
            Row("64 B round trip p50 vs ssh -L", p50["ours"], "us", p50["ssh -L"]),
            Row("64 B round trip p99 vs ssh -L", p99["ours"], "us", p99["ssh -L"]),
        ]
    return rows


def gdb_read(port: int, repeat: int, workdir: Path) -> tuple[float, float]:
    """(median seconds of one 64 KiB read inside gdb, seconds of the whole gdb -batch run)."""
    script = workdir / "read.py"
    script.write_text(GDB_SCRIPT.format(repeat=repeat, read=GDB_READ))
    start = perf_counter()
    result = subprocess.run(
        ["gdb-multiarch", "-batch", "-nx", str(FIRMWARE_DEBUG)]
        + ["-ex", f"target remote {rig.LOCALHOST}:{port}", "-x", str(script)],
        capture_output=True,
        text=True,
        timeout=GDB_TIMEOUT_S,
    )
    whole = perf_counter() - start
    for line in result.stdout.splitlines():
        if line.startswith("READ-TIMES "):
            return stats.median([float(t) for t in line.split()[1:]]), whole
    raise RuntimeError(f"gdb did not read: {result.stdout[-500:]} {result.stderr[-1000:]}")


def gdb_rows(args: argparse.Namespace, w: rig.World, stub_port: int) -> list[Row]:
    _, local = start_forward(w, "forward-gdb", f"{rig.LOCALHOST}:{stub_port}")
    # gdb reads with `x` one word per packet (m ADDR,4, acknowledged): 16,384 round
    # trips, so a run takes seconds through the forward; one gdb run per path.
    read_direct, run_direct = (1e3 * t for t in gdb_read(stub_port, args.gdb_repeat, w.workdir))
    read_fwd, run_fwd = (1e3 * t for t in gdb_read(local, args.gdb_repeat, w.workdir))
    print(f"  gdb {GDB_READ}: forward {read_fwd:.1f} ms, direct {read_direct:.1f} ms", flush=True)
    return [
        Row(f"gdb {GDB_READ}", read_fwd, "ms", read_direct),
        Row("gdb -batch: connect + read, whole run", run_fwd, "ms", run_direct, digits=0),
    ]


# ---- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench forward", description=__doc__)
    parser.add_argument("--mib", type=int, default=64, help="MiB per throughput run")
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs (median kept)")
    parser.add_argument("--count", type=int, default=2000, help="round trips measured")
    parser.add_argument("--warmup", type=int, default=200, help="round trips not measured")
    parser.add_argument("--gdb-repeat", type=int, default=1, help="64 KiB reads per gdb run")
    parser.add_argument("--no-gdb", action="store_true", help="skip the gdb phase")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--keep-logs", action="store_true")
    return parser.parse_args(argv)


def agent_toml(backend_port: int, stub_port: int) -> str:
    allow = [f"{rig.LOCALHOST}:{backend_port}", f"{rig.LOCALHOST}:{stub_port}"]
    return "[[forward]]\nallow = [" + ", ".join(f'"{a}"' for a in allow) + "]\n"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    machine = stats.machine_line()
    print(f"forward benchmark: {machine}")
    gdb_ok = not args.no_gdb and shutil.which("gdb-multiarch") and shutil.which("qemu-system-arm")
    if not args.no_gdb and not gdb_ok:
        print("(gdb phase skipped: needs gdb-multiarch and qemu-system-arm)")
    stub_port = rig.free_port()
    rows: list[Row] = []
    with (
        backend() as backend_port,
        rig.world(keep=args.keep_logs) as w,
        openssh.sshd() as server,
        floor.floor_chain(backend_port) as floor_port,
    ):
        (w.home / "agent.toml").write_text(agent_toml(backend_port, stub_port))
        agent = w.start_agent(AGENT_NAME)
        fwd, local = start_forward(w, "forward", f"{rig.LOCALHOST}:{backend_port}")
        ours = Path_("ours", local)
        ssh = Path_("ssh -L", start_ssh_l(w, server, backend_port)) if server else None
        if server:
            print(f"baseline ssh -L, cipher {server.cipher}", flush=True)
        meter = {"relay": w.relay.pid, "agent": agent.pid, "forward": fwd.pid}
        rows += transfer_rows(args, ours, ssh, meter)
        paths = [p for p in (ours, ssh, Path_("floor", floor_port)) if p is not None]
        rows += rtt_rows(args, paths, meter)
        if gdb_ok:
            with BoardFarm(w.workdir / "vb", 1, FIRMWARE_DEBUG, gdb_port=stub_port, gdb_wait=True):
                rows += gdb_rows(args, w, stub_port)
    ok = stats.print_table("forward: device forward --tcp", "baseline", rows)
    print("  (baselines: throughput ssh -L; round trip the floor or ssh -L; gdb: direct)")
    print(f"  (at the end: {stats.load_line()})")
    if args.json:
        stats.write_json(args.json, "forward", machine, rows, {})
    return 1 if args.check and not ok else 0


def _run_backend(lifetime: float = 600.0) -> None:
    """Child process body: the backend in a thread; exits by itself after ``lifetime``."""
    listener = socket.create_server((rig.LOCALHOST, 0))
    threading.Thread(
        target=rawtcp.serve, args=(listener, rawtcp.serve_backend), daemon=True
    ).start()
    print(f"backend on {listener.getsockname()[1]}", flush=True)
    time.sleep(lifetime)


if __name__ == "__main__":
    if sys.argv[1:] == ["backend"]:
        _run_backend()
    else:
        sys.exit("usage: forward.py backend")
