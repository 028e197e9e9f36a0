"""`scripts/bench monitor`: the remote serial monitor's keystroke latency and throughput.

What a monitor user feels is the echo of a key typed at a board, and how fast a
chatty board's output arrives. Both go through relay + agent + a pty device, as
real processes, driven by the client library (``open_monitor``):

- keystroke echo: one byte to a pty echo device and back, repeated; compared with
  OpenSSH doing the same to a pty in the same run: ``ssh -tt host 'stty raw -echo;
  cat'``, a byte to ssh's stdin and back (targets: p50 <= 2x, p99 <= 3x OpenSSH).
  Without sshd the baseline is raw TCP echo through a one-hop forwarder (no pty);
- throughput: a pty device writing as fast as it can, consumed through the
  monitor (target >= 10 MB/s), next to the same device read locally (the ceiling).

Run as a script, this file is also the pty device: ``monitor.py device MODE LINK``.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import threading
import tty
from pathlib import Path
from time import perf_counter

import trio
from harness import cpumeter, openssh, rawtcp, rig, stats
from harness.rig import PY
from harness.stats import AT_LEAST, AT_MOST, Row, Target

from pio_remote.client.monitor.remote import open_monitor

AGENT_NAME = "bench-monitor"
KEYSTROKES = 500
WARMUP = 50
THROUGHPUT_SECONDS = 3.0
PHASE_TIMEOUT_S = 120.0
FLOOD_BLOCK = bytes(range(256)) * 256  # 64 KiB

RTT_P50_TARGET = Target(AT_MOST, 2.0)
RTT_P99_TARGET = Target(AT_MOST, 3.0)
THROUGHPUT_TARGET = Target(AT_LEAST, 10.0, "MB/s")


# ---- the pty device (child process) ------------------------------------------------------


def run_device(mode: str, link: str) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    os.symlink(os.ttyname(slave), link)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"device {mode} ready", flush=True)
    try:
        while True:
            if mode == "echo":
                try:
                    os.write(master, os.read(master, 65536))
                except OSError:
                    select.select([master], [], [], 0.05)
            else:
                os.write(master, FLOOD_BLOCK)
    finally:
        os.unlink(link)


def start_device(w: rig.World, mode: str, link: Path) -> rig.Proc:
    proc = w.spawn(f"device-{mode}", [PY, __file__, "device", mode, str(link)], rig.child_env())
    proc.wait_for("ready")
    return proc


# ---- ours -----------------------------------------------------------------------------------


def connect_args(w: rig.World) -> dict[str, object]:
    return {"relay": w.url, "token": w.token, "home_path": w.home}


async def ours_keystrokes(w: rig.World, link: Path, count: int, warmup: int) -> list[float]:
    times = []
    with trio.fail_after(PHASE_TIMEOUT_S):
        async with open_monitor(AGENT_NAME, str(link), **connect_args(w)) as mon:
            for i in range(warmup + count):
                start = perf_counter()
                await mon.send(b"k")
                while (item := await mon.receive()) != b"k":
                    if item is None:
                        raise RuntimeError("the monitor ended")
                if i >= warmup:
                    times.append(perf_counter() - start)
    return times


async def ours_throughput(w: rig.World, link: Path, seconds: float) -> tuple[int, float]:
    with trio.fail_after(PHASE_TIMEOUT_S):
        async with open_monitor(AGENT_NAME, str(link), **connect_args(w)) as mon:
            while not isinstance(await mon.receive(), bytes):
                pass  # the "opened" notice
            total, start = 0, perf_counter()
            while (elapsed := perf_counter() - start) < seconds:
                item = await mon.receive()
                if isinstance(item, bytes):
                    total += len(item)
    return total, elapsed


def local_throughput(link: Path, seconds: float) -> tuple[int, float]:
    """The device read directly on this machine: what the pty itself can do."""
    fd = os.open(link, os.O_RDONLY | os.O_NOCTTY)
    try:
        tty.setraw(fd)
        total, start = 0, perf_counter()
        while (elapsed := perf_counter() - start) < seconds:
            total += len(os.read(fd, 65536))
    finally:
        os.close(fd)
    return total, elapsed


# ---- baselines ------------------------------------------------------------------------------


def ssh_keystrokes(server: openssh.Sshd, count: int, warmup: int) -> list[float]:
    """A byte into `ssh -tt` and back out of `cat` on the remote pty."""
    cmd = server.cmd("stty raw -echo; echo ready; exec cat")
    cmd.insert(1, "-tt")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    assert proc.stdin is not None and proc.stdout is not None
    fdin, fdout = proc.stdin.fileno(), proc.stdout.fileno()
    timer = threading.Timer(PHASE_TIMEOUT_S, proc.kill)
    timer.start()
    try:
        seen = b""
        while b"ready\n" not in seen:
            chunk = os.read(fdout, 4096)
            if not chunk:
                raise RuntimeError("ssh did not log in")
            seen += chunk
        times = []
        for i in range(warmup + count):
            start = perf_counter()
            os.write(fdin, b"k")
            if os.read(fdout, 1) != b"k":
                raise RuntimeError("ssh echoed something else")
            if i >= warmup:
                times.append(perf_counter() - start)
        return times
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()


def tcp_keystrokes(server: rawtcp.TcpBaseline, count: int, warmup: int) -> list[float]:
    times = []
    with server.connect(rawtcp.TCP_ECHO) as sock:
        for i in range(warmup + count):
            start = perf_counter()
            sock.sendall(b"k")
            if sock.recv(1) != b"k":
                raise RuntimeError("tcp echo answered something else")
            if i >= warmup:
                times.append(perf_counter() - start)
    return times


# ---- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench monitor", description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=KEYSTROKES, help="measured keystrokes")
    p.add_argument("--warmup", type=int, default=WARMUP, help="unmeasured keystrokes first")
    p.add_argument(
        "--seconds", type=float, default=THROUGHPUT_SECONDS, help="length of each throughput run"
    )
    p.add_argument(
        "--baseline",
        choices=("auto", "ssh", "tcp"),
        default="auto",
        help="OpenSSH (auto: when sshd can run) or raw TCP through a forwarder",
    )
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.count < 1 or args.warmup < 0 or args.seconds <= 0:
        p.error("--count and --seconds must be positive, --warmup not negative")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    machine = stats.machine_line()
    print(f"monitor benchmark: {machine}", flush=True)
    rows: list[Row] = []
    cpu: dict[str, str] = {}
    with rig.world() as w:
        devices = w.workdir / "dev"
        devices.mkdir()
        agent = w.start_agent(AGENT_NAME, "--port-glob", str(devices / "*"))
        pids = {"relay": w.relay.pid, "agent": agent.pid, "client": os.getpid()}
        echo = devices / "echo"
        start_device(w, "echo", echo)
        with cpumeter.CpuMeter(pids) as meter:
            ours = trio.run(ours_keystrokes, w, echo, args.count, args.warmup)
        cpu["keystroke (ms CPU each)"] = meter.per(len(ours) + args.warmup, 1e3)
        base, name = keystroke_baseline(args)
        for pct, target in ((50, RTT_P50_TARGET), (99, RTT_P99_TARGET)):
            rows.append(
                Row(
                    f"keystroke echo p{pct}",
                    stats.percentile(ours, pct) * 1e6,
                    "us",
                    stats.percentile(base, pct) * 1e6,
                    target,
                    digits=0,
                )
            )

        flood = devices / "flood"
        start_device(w, "flood", flood)
        local_bytes, local_s = local_throughput(flood, args.seconds)
        with cpumeter.CpuMeter(pids) as meter:
            got, seconds = trio.run(ours_throughput, w, flood, args.seconds)
        cpu["throughput (s CPU per GB)"] = meter.per(got, 1e9)
        rows.append(
            Row(
                "device->client throughput",
                got / seconds / 1e6,
                "MB/s",
                local_bytes / local_s / 1e6,
                THROUGHPUT_TARGET,
            )
        )
    ok = stats.print_table(f"monitor: relay + agent + pty vs {name}", name, rows)
    print(
        f"  (throughput baseline: the same pty device read locally, no network; "
        f"keystroke baseline: {name})"
    )
    print("  ours, CPU:")
    for phase, text in cpu.items():
        print(f"    {phase:28s} {text}")
    print(f"  (at the end: {stats.load_line()})")
    if args.json:
        stats.write_json(args.json, "monitor", machine, rows, {"cpu": cpu, "baseline": name})
    return 1 if args.check and not ok else 0


def keystroke_baseline(args: argparse.Namespace) -> tuple[list[float], str]:
    if args.baseline in ("auto", "ssh"):
        with openssh.sshd() as server:
            if server is not None:
                return ssh_keystrokes(server, args.count, args.warmup), "OpenSSH"
            if args.baseline == "ssh":
                raise SystemExit("--baseline ssh: sshd is not usable here")
    print("(no sshd: the keystroke baseline is raw TCP echo through one forwarder, no pty)")
    with rawtcp.tcp_baseline() as tcp:
        return tcp_keystrokes(tcp, args.count, args.warmup), "raw TCP"


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "device" and sys.argv[2] in ("echo", "flood"):
        run_device(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: monitor.py device echo|flood LINK")
