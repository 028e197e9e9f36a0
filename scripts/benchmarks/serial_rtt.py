"""`scripts/bench serial-rtt`: CPU per serial echo round trip, per process, beside bare trio.

A monitor user's keystroke crosses client, relay and agent twice. What each
costs in CPU moves far less with other people's load than its latency does, so
this counts CPU seconds (user + system, from psutil) per 64-byte echo through
a pty echo board:

- ours: ``open_monitor`` (the client library, in this process) -> relay ->
  agent -> pty, and back; one 64-byte write, then read until its 64 bytes
  came back, ``--count`` times;
- the floor: the same loop from a bare trio TCP client in this process, one
  bare trio hop (floor.py) where the relay is, and a bare trio process that
  copies between TCP and the same kind of pty where the agent is: what three
  trio processes that only copy bytes cost.

Targets (absolute, per round trip): agent + client <= 550 us, relay <= 150 us.
"""

from __future__ import annotations

import argparse
import os
import sys
import tty
from collections.abc import Awaitable, Callable
from pathlib import Path

import floor
import monitor
import trio
from harness import cpumeter, rig, stats
from harness.rig import PY
from harness.stats import AT_MOST, Row, Target

from pio_remote.client.monitor.remote import open_monitor

COUNT = 2000
WARMUP = 200
MESSAGE = bytes(range(64))
PHASE_TIMEOUT_S = 300.0
ENDS_TARGET = Target(AT_MOST, 550.0, "us")
RELAY_TARGET = Target(AT_MOST, 150.0, "us")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench serial-rtt", description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=COUNT, help="measured round trips")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    return p.parse_args(argv)


async def echo_loop(
    send: Callable[[bytes], Awaitable[object]], receive: Callable[[], Awaitable[object]], count: int
) -> None:
    """``count`` round trips of MESSAGE: one write, then reads until it is all back."""
    for _ in range(count):
        await send(MESSAGE)
        got = 0
        while got < len(MESSAGE):
            item = await receive()
            if isinstance(item, bytes):
                got += len(item)
            elif item is None:
                raise RuntimeError("the echo ended")


async def ours(
    w: rig.World, agent: str, link: Path, pids: dict[str, int], count: int
) -> dict[str, float]:
    with trio.fail_after(PHASE_TIMEOUT_S):
        async with open_monitor(
            agent, str(link), relay=w.url, token=w.token, home_path=w.home
        ) as mon:
            await echo_loop(mon.send, mon.receive, WARMUP)
            with cpumeter.CpuMeter(pids) as meter:
                await echo_loop(mon.send, mon.receive, count)
    return meter.per_unit(count, 1e6)


async def bare(port: int, pids: dict[str, int], count: int) -> dict[str, float]:
    with trio.fail_after(PHASE_TIMEOUT_S):
        async with await trio.open_tcp_stream(rig.LOCALHOST, port) as sock:

            async def receive() -> bytes:
                return await sock.receive_some(65536)

            await echo_loop(sock.send_all, receive, WARMUP)
            with cpumeter.CpuMeter(pids) as meter:
                await echo_loop(sock.send_all, receive, count)
    return meter.per_unit(count, 1e6)


# ---- the floor's "agent": TCP <-> pty, nothing else (run as a child process) ------------


async def pty_agent(link: str) -> None:
    fd = os.open(link, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    pty = trio.lowlevel.FdStream(fd)
    listeners = await trio.open_tcp_listeners(0, host=rig.LOCALHOST)
    print(f"pty agent on {listeners[0].socket.getsockname()[1]}", flush=True)

    async def handle(sock: trio.SocketStream) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(copy, sock, pty)
            await copy(pty, sock)

    with trio.move_on_after(floor.HOP_LIFETIME_S):
        await trio.serve_listeners(handle, listeners)


async def copy(src: trio.abc.ReceiveStream, dst: trio.abc.SendStream) -> None:
    try:
        while data := await src.receive_some(floor.READ_SIZE):
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    machine = stats.machine_line()
    print(f"serial-rtt benchmark: {machine}", flush=True)
    with rig.world() as w:
        devices = w.workdir / "dev"
        devices.mkdir()
        agent = w.start_agent("bench-serial", "--port-glob", str(devices / "*"))
        echo = devices / "echo"
        monitor.start_device(w, "echo", echo)
        pids = {"relay": w.relay.pid, "agent": agent.pid, "client": os.getpid()}
        mine = trio.run(ours, w, "bench-serial", echo, pids, args.count)

        bare_echo = devices / "bare-echo"
        monitor.start_device(w, "echo", bare_echo)
        pty_proc = w.spawn(
            "pty-agent", [PY, __file__, "pty-agent", str(bare_echo)], rig.child_env()
        )
        pty_port = int(pty_proc.wait_for(r"pty agent on (\d+)").group(1))
        with floor.floor_chain(pty_port, hops=1) as front:
            hop_pid = _listener_pid(front)
            fpids = {"relay": hop_pid, "agent": pty_proc.pid, "client": os.getpid()}
            theirs = trio.run(bare, front, fpids, args.count)
    rows = [
        Row("agent CPU per round trip", mine["agent"], "us", theirs["agent"], digits=0),
        Row("client CPU per round trip", mine["client"], "us", theirs["client"], digits=0),
        Row(
            "agent + client",
            mine["agent"] + mine["client"],
            "us",
            theirs["agent"] + theirs["client"],
            ENDS_TARGET,
            digits=0,
        ),
        Row("relay CPU per round trip", mine["relay"], "us", theirs["relay"], RELAY_TARGET, 0),
        Row("total", mine["total"], "us", theirs["total"], digits=0),
    ]
    ok = stats.print_table(
        "serial-rtt: CPU per 64 B echo through the monitor path (baseline: bare trio, "
        "one process per role)",
        "bare trio",
        rows,
    )
    print(f"  ({args.count} round trips each; {stats.load_line()})")
    if args.json:
        stats.write_json(args.json, "serial-rtt", machine, rows, {"count": args.count})
    return 1 if args.check and not ok else 0


def _listener_pid(port: int) -> int:
    """The process listening on 127.0.0.1:``port`` (the floor's hop)."""
    import psutil

    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return conn.pid
    raise SystemExit(f"no process listens on port {port}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "pty-agent":
        trio.run(pty_agent, sys.argv[2])
    else:
        sys.exit("usage: serial_rtt.py pty-agent LINK")
