"""`scripts/bench farm-monitor`: one agent monitoring a farm of chatty boards for one client.

16 virtual boards (ptys driven by one "farm" process; QEMU boards would cost
more CPU than the agent under test) each print short lines continuously at the
pace of a 115200 baud UART (11,520 bytes/s each), written every few ms as a
USB-serial bridge delivers them. One client process monitors all 16 through
one relay and one agent, and for every line measures the lag from the board's
write (a CLOCK_MONOTONIC stamp in the line) to its arrival in the client.

Figures: agent CPU as a percentage of one core, agent RSS, client-side lag
(p50/p99/max) and lines lost. Target: the agent uses at most 10% of one core.
Baseline in the same run: one bare trio process that reads the same 16 ptys
itself (``wait_readable`` + ``os.read``, nothing else): what reading the boards
costs in Python at all. A single board through the agent is shown as well.

``--serial-backend thread`` adds the agent's thread backend (pyserial in a thread per
port) on the same farm in the same run, alternating with the fd backend ``--rounds``
times: its agent CPU against the fd backend's (median of each). Target: at most 1.5x.

Run as a script, this file is also the farm (``farm_monitor.py farm DIR N TICK_MS``)
and the bare reader (``farm_monitor.py bare DIR N``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import tty
from pathlib import Path

import trio
from harness import rig, stats
from harness.rig import PY
from harness.stats import AT_MOST, Row, Target

from pio_remote.client.monitor.remote import open_monitor

AGENT_NAME = "bench-farm"
BOARDS = 16
BAUD_BYTES_PER_S = 115_200 // 10  # 8-N-1: ten bits a byte
TICK_MS = 5.0
SECONDS = 10.0
WARMUP_S = 2.0
PHASE_TIMEOUT_S = 120.0
CPU_TARGET = Target(AT_MOST, 10.0, "% core")
THREAD_TARGET = Target(AT_MOST, 1.5)


# ---- the farm and the bare reader (child processes) ------------------------------------


def line(board: int, seq: int) -> bytes:
    """About 48 bytes: which board, a sequence number, and when it was written (ns)."""
    return b"[board %02d] seq %08d t %020d\r\n" % (board, seq, time.monotonic_ns())


def run_farm(directory: str, count: int, tick_ms: float) -> None:
    """Every board writes the bytes its UART would have sent since the last tick.

    Writes are non-blocking: while nobody reads a board (between phases) its
    lines are dropped, as a UART's would be.
    """
    masters = []
    for board in range(count):
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        os.symlink(os.ttyname(slave), os.path.join(directory, f"board{board:02d}"))
        masters.append(master)  # the slave stays open here, so a reader's close is no EOF
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"farm of {count} ready", flush=True)
    budget = [0.0] * count
    seq = [0] * count
    per_tick = BAUD_BYTES_PER_S * tick_ms / 1000
    next_tick = time.monotonic()
    while True:
        next_tick += tick_ms / 1000
        for board, master in enumerate(masters):
            budget[board] += per_tick
            chunk = bytearray()
            while budget[board] >= 48:
                chunk += line(board, seq[board])
                seq[board] += 1
                budget[board] -= 48
            if chunk:
                try:
                    os.write(master, chunk)
                except BlockingIOError:
                    pass
        time.sleep(max(0.0, next_tick - time.monotonic()))


def run_bare(directory: str, count: int) -> None:
    """Read every board as fast as it prints, in one trio process, and do nothing else."""

    async def read_one(path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(fd)
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                os.read(fd, 65536)
            except BlockingIOError:
                pass

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for board in range(count):
                nursery.start_soon(read_one, os.path.join(directory, f"board{board:02d}"))
            print("reading", flush=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    trio.run(main)


# ---- the client ------------------------------------------------------------------------------


class Lag:
    """Per-line lag from each board's write to this process, after a warm-up."""

    def __init__(self, measure_from: float) -> None:
        self.measure_from = measure_from
        self.lags: list[float] = []
        self.lost = 0
        self.last_seq: dict[int, int] = {}

    def feed(self, board: int, text: bytes) -> None:
        now = time.monotonic_ns()
        counting = now / 1e9 >= self.measure_from
        for raw in text.split(b"\r\n"):
            parts = raw.split()
            if len(parts) != 6 or parts[0] != b"[board":
                continue
            seq, stamp = int(parts[3]), int(parts[5])
            before = self.last_seq.get(board)
            if counting:
                if before is not None and seq != before + 1:
                    self.lost += max(0, seq - before - 1)
                self.lags.append((now - stamp) / 1e9)
            self.last_seq[board] = seq


async def monitor_farm(
    w: rig.World, links: list[Path], seconds: float, lag: Lag, agent_name: str
) -> None:
    args = {"relay": w.url, "token": w.token, "home_path": w.home}

    async def one(board: int, link: Path) -> None:
        async with open_monitor(agent_name, str(link), **args) as mon:
            pending = b""
            while (item := await mon.receive()) is not None:
                if isinstance(item, bytes):
                    pending += item
                    cut = pending.rfind(b"\r\n")
                    if cut >= 0:
                        lag.feed(board, pending[:cut])
                        pending = pending[cut + 2 :]

    with trio.fail_after(PHASE_TIMEOUT_S):
        with trio.move_on_after(WARMUP_S + seconds):
            async with trio.open_nursery() as nursery:
                for board, link in enumerate(links):
                    nursery.start_soon(one, board, link)


def measure_agent(
    w: rig.World,
    agent: rig.Proc,
    links: list[Path],
    seconds: float,
    agent_name: str = AGENT_NAME,
) -> tuple[float, float, float, Lag]:
    """Agent CPU % of one core and RSS (MiB, peak sampled), client CPU %, and the lag."""
    import psutil

    proc = psutil.Process(agent.pid)
    me = psutil.Process()
    lag = Lag(time.monotonic() + WARMUP_S + 1.0)  # connecting takes about a second
    peak = [0]
    window: dict[str, float] = {}

    async def main() -> None:
        async def sample() -> None:
            await trio.sleep(WARMUP_S + 1.0)
            window["start"] = time.monotonic()
            window["agent"] = sum(proc.cpu_times()[:2])
            window["client"] = sum(me.cpu_times()[:2])
            while True:
                peak[0] = max(peak[0], proc.memory_info().rss)
                await trio.sleep(0.5)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            await monitor_farm(w, links, seconds + 1.0, lag, agent_name)
            elapsed = time.monotonic() - window["start"]
            window["agent"] = (sum(proc.cpu_times()[:2]) - window["agent"]) / elapsed
            window["client"] = (sum(me.cpu_times()[:2]) - window["client"]) / elapsed
            nursery.cancel_scope.cancel()

    trio.run(main)
    return window["agent"] * 100, peak[0] / rig.MiB, window["client"] * 100, lag


def measure_bare(w: rig.World, directory: Path, count: int, seconds: float) -> float:
    import psutil

    args = [PY, __file__, "bare", str(directory), str(count)]
    reader = w.spawn("bare", args, rig.child_env())
    try:
        reader.wait_for("reading")
        proc = psutil.Process(reader.pid)
        time.sleep(WARMUP_S)  # a measuring window, not a wait for an event
        start, used = time.monotonic(), sum(proc.cpu_times()[:2])
        time.sleep(seconds)
        return (sum(proc.cpu_times()[:2]) - used) / (time.monotonic() - start) * 100
    finally:
        reader.stop()


# ---- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    summary = __doc__.split("\n")[0]
    p = argparse.ArgumentParser(prog="scripts/bench farm-monitor", description=summary)
    p.add_argument("--boards", type=int, default=BOARDS, help="virtual boards (default 16)")
    p.add_argument("--seconds", type=float, default=SECONDS, help="length of each measured phase")
    p.add_argument("--tick-ms", type=float, default=TICK_MS, help="how often each board writes")
    p.add_argument(
        "--serial-backend",
        choices=["fd", "thread"],
        default="fd",
        help="thread: also measure the agent's thread backend against the fd one",
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="fd/thread alternations with --serial-backend thread"
    )
    p.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.boards < 1 or args.seconds <= 0 or args.tick_ms <= 0 or args.rounds < 1:
        p.error("--boards, --seconds, --tick-ms and --rounds must be positive")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    machine = stats.machine_line()
    print(f"farm-monitor benchmark: {machine}", flush=True)
    with rig.world() as w:
        devices = w.workdir / "dev"
        devices.mkdir()
        farm = w.spawn(
            "farm",
            [PY, __file__, "farm", str(devices), str(args.boards + 1), str(args.tick_ms)],
            rig.child_env(),
        )
        farm.wait_for("ready")
        *links, spare = sorted(devices.iterdir())  # the spare one for the 1-board phase
        bare = measure_bare(w, devices, args.boards, args.seconds)
        agent = w.start_agent(AGENT_NAME, "--port-glob", str(devices / "*"))
        one_cpu, _, _, _ = measure_agent(w, agent, [spare], args.seconds)
        cpu, rss, client_cpu, lag = measure_agent(w, agent, links, args.seconds)
        backends = None
        if args.serial_backend == "thread":
            backends = compare_backends(w, agent, links, args.seconds, args.rounds, cpu)
    p50, p99 = (stats.percentile(lag.lags, pct) * 1e3 for pct in (50, 99))
    rows = [
        Row(f"agent CPU, {args.boards} boards", cpu, "% core", bare, CPU_TARGET),
        Row("agent CPU, 1 board", one_cpu, "% core"),
        Row("agent RSS (peak)", rss, "MiB"),
        Row("client-side lag p50", p50, "ms", digits=2),
        Row("client-side lag p99", p99, "ms", digits=2),
        Row("client-side lag max", max(lag.lags) * 1e3, "ms", digits=2),
        Row("lines lost", lag.lost, "lines", digits=0),
    ]
    ok = stats.print_table(
        f"farm-monitor: {args.boards} boards at 115200 baud, one agent, one client",
        "bare trio",
        rows,
    )
    rate = args.boards * BAUD_BYTES_PER_S
    print(
        f"  (baseline: one bare trio process reading the same {args.boards} ptys; "
        f"{rate:,} bytes/s in {len(lag.lags):,} lines measured; client CPU {client_cpu:.1f}%)"
    )
    print(f"  (at the end: {stats.load_line()})")
    if backends is not None:
        ok = print_backends(args, *backends) and ok
        rows += backends[0]
    if args.json:
        extra = {"client_cpu_pct": client_cpu, "lines": len(lag.lags)}
        stats.write_json(args.json, "farm-monitor", machine, rows, extra)
    return 1 if args.check and not ok else 0


def compare_backends(
    w: rig.World,
    fd_agent: rig.Proc,
    links: list[Path],
    seconds: float,
    rounds: int,
    first_fd: float,
) -> tuple[list[Row], list[float], list[float]]:
    """Thread and fd backends alternately on the same farm; rows of medians, and each run."""
    name = AGENT_NAME + "-thread"
    thread_agent = w.start_agent(name, "--port-glob", str(links[0].parent / "*"),
                                 "--serial-backend", "thread")  # fmt: skip
    fd_cpu, thread_cpu, thread_rss, lags, lost = [first_fd], [], [], [], 0
    for n in range(rounds):
        cpu, rss, _, lag = measure_agent(w, thread_agent, links, seconds, name)
        thread_cpu.append(cpu)
        thread_rss.append(rss)
        lags += lag.lags
        lost += lag.lost
        if n + 1 < rounds:
            fd_cpu.append(measure_agent(w, fd_agent, links, seconds)[0])
    fd, thread = stats.median(fd_cpu), stats.median(thread_cpu)
    rows = [
        Row("agent CPU, thread backend", thread, "% core", fd, THREAD_TARGET),
        Row("agent RSS (peak), thread backend", max(thread_rss), "MiB"),
        Row("client-side lag p99, thread", stats.percentile(lags, 99) * 1e3, "ms", digits=2),
        Row("lines lost, thread backend", lost, "lines", digits=0),
    ]
    return rows, fd_cpu, thread_cpu


def print_backends(
    args: argparse.Namespace, rows: list[Row], fd_cpu: list[float], thread_cpu: list[float]
) -> bool:
    ok = stats.print_table(
        f"farm-monitor: {args.boards} boards, the agent's thread serial backend", "fd backend", rows
    )
    runs = ", ".join(f"{f:.1f}/{t:.1f}" for f, t in zip(fd_cpu, thread_cpu, strict=True))
    print(f"  (medians of {args.rounds} alternating runs; fd/thread agent CPU %: {runs})")
    return ok


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "farm":
        run_farm(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    elif len(sys.argv) == 4 and sys.argv[1] == "bare":
        run_bare(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: farm_monitor.py farm DIR N TICK_MS | bare DIR N")
