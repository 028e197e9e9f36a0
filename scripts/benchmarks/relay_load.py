"""`scripts/bench relay-load`: one relay under 10,000 idle agents and 200 active sessions.

The relay is shared by everyone on a self-hosted install, so the question is
what its idle crowd costs the people using it. This starts a relay, then 200
active sessions (a raw envelope agent echoing, a raw client sending 64 bytes
every ``--interval`` and timing the echo), and measures them twice:

1. **baseline**: the active sessions alone;
2. **loaded**: the same, with ``--idle`` idle agent connections held open
   (HELLO, then only answering the relay's keepalive PINGs), as in relay-rss.

It reports the active sessions' round trip p50/p99 in both phases (and their
ratio), the relay's CPU (percent of one core, from psutil) in both, and its RSS.
The peers speak the envelope directly, without Noise, so the figures are the
relay's own. Target: loaded p99 <= 2x the baseline's.

Bounded: every step has a deadline, the drivers exit on their own after
DRIVER_LIFETIME_S, and everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import relay_rss
import trio
from harness import cpumeter, echoloop, rig, stats
from harness.rig import MiB
from harness.stats import AT_MOST, Row, Target

from pio_remote.net import wsclient
from pio_remote.net.wsio import ClientWebSocket
from pio_remote.wire import envelope
from pio_remote.wire.envelope import FrameType

IDLE = 10_000
ACTIVE = 200
INTERVAL_S = 0.1  # per session: 10 messages a second, 2,000 a second in all
PHASE_S = 10.0
WARMUP_S = 2.0
MESSAGE = 64
# Relay limits off: every connection comes from 127.0.0.1 and one account.
RELAY_ARGS = (
    "--accept-rate",
    "0",
    "--max-connections-per-ip",
    "0",
    "--accept-rate-per-ip",
    "0",
    "--max-pending-per-ip",
    "0",
    "--max-connections-per-account",
    "0",
    "--log-level",
    "warning",
)
CONNECT_TIMEOUT_S = 120.0
DRIVER_LIFETIME_S = 900.0
FD_HEADROOM = 256
# A round trip this slow counts as a stall (the relay's 45 s write-stall limit
# is what a stall used to last; 1 s is already far off any healthy figure).
STALL_S = 1.0

P99_TARGET = Target(AT_MOST, 2.0)


# ---- drivers (child processes) ------------------------------------------------------------


def driver_main(argv: list[str]) -> int:
    role, url, token, count = argv[0], argv[1], argv[2], int(argv[3])
    rig.raise_nofile(4 * count + FD_HEADROOM)
    trio.run(_bounded, _agents if role == "agents" else _clients, url, token, count)
    return 0


async def _bounded(fn: object, *args: object) -> None:
    with trio.move_on_after(DRIVER_LIFETIME_S):
        await fn(*args)  # type: ignore[operator]


@contextlib.asynccontextmanager
async def _socket(url: str, role: str, token: str) -> AsyncIterator[ClientWebSocket]:
    """A raw envelope-speaking WebSocket to ``/v1/<role>``."""
    headers = [("Authorization", f"Bearer {token}")]
    ws = await wsclient.connect(url, f"/v1/{role}", headers, envelope.MAX_FRAME_SIZE)
    try:
        yield ws
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await ws.aclose()


async def _first(ws: ClientWebSocket) -> envelope.Frame:
    """The next message, decoded; any later ones stay for the next receive()."""
    first, *rest = await ws.receive()
    ws.unread(rest)
    return envelope.decode(first)


async def _agents(url: str, token: str, count: int) -> None:
    """``count`` agents act-NNNN, each echoing every DATA frame on its channel."""

    async def agent(index: int, task_status: trio.TaskStatus[None]) -> None:
        async with _socket(url, "agent", token) as ws:
            hello = {"version": 1, "role": "agent", "name": f"act-{index:04d}", "shares": []}
            hello["key"] = os.urandom(32).hex()
            await ws.send(envelope.encode_json(FrameType.HELLO, 0, hello))
            assert (await _first(ws)).type is FrameType.WELCOME
            task_status.started()
            while True:
                for message in await ws.receive():
                    ftype = message[0]
                    if ftype == FrameType.DATA:
                        await ws.send(message)  # same channel id: the relay maps it back
                    elif ftype == FrameType.PING:
                        await ws.send(bytes([FrameType.PONG]) + message[1:])

    async with trio.open_nursery() as nursery:
        with trio.fail_after(CONNECT_TIMEOUT_S):
            for index in range(count):
                await nursery.start(agent, index)
        print(f"agents {count} ready", flush=True)


async def _clients(url: str, token: str, count: int) -> None:
    """``count`` clients, one channel each to act-NNNN; ``run SECONDS`` on stdin measures."""
    sockets: list[ClientWebSocket] = []
    replies: list[trio.MemoryReceiveChannel[float]] = []

    async def client(index: int, task_status: trio.TaskStatus[None]) -> None:
        async with _socket(url, "client", token) as ws:
            await ws.send(
                envelope.encode_json(FrameType.HELLO, 0, {"version": 1, "role": "client"})
            )
            assert (await _first(ws)).type is FrameType.WELCOME
            await ws.send(envelope.encode(FrameType.OPEN, 1, f"act-{index:04d}".encode()))
            assert (await _first(ws)).type is FrameType.OPENED
            send, receive = trio.open_memory_channel[float](1)
            sockets.append(ws)
            replies.append(receive)
            task_status.started()
            while True:
                for message in await ws.receive():
                    if message[0] == FrameType.DATA:
                        send.send_nowait(time.perf_counter())
                    elif message[0] == FrameType.PING:
                        await ws.send(bytes([FrameType.PONG]) + message[1:])

    async def measure(index: int, seconds: float, rtts: list[float]) -> None:
        ws, reply = sockets[index], replies[index]
        payload = bytes(MESSAGE)
        frame = envelope.HEADER.pack(FrameType.DATA, 1) + payload
        next_at = trio.current_time() + random.uniform(0, INTERVAL_S)
        end = trio.current_time() + seconds
        while next_at < end:
            await trio.sleep_until(next_at)
            start = time.perf_counter()
            await ws.send(frame)
            with trio.fail_after(30):
                back = await reply.receive()
            rtts.append(back - start)
            next_at = max(next_at + INTERVAL_S, trio.current_time())

    async with trio.open_nursery() as nursery:
        with trio.fail_after(CONNECT_TIMEOUT_S):
            for index in range(count):
                await nursery.start(client, index)
        print(f"clients {count} ready", flush=True)
        await echoloop.serve_echo_runs(count, measure)
        nursery.cancel_scope.cancel()


# ---- the benchmark ----------------------------------------------------------------------------


def phase(
    clients: rig.Proc, pids: dict[str, int], seconds: float
) -> tuple[list[float], dict[str, float]]:
    """Round trips (us) of every active session for ``seconds``; CPU % of one core per process."""
    assert clients.popen.stdin is not None
    clients.lines.clear()
    with cpumeter.CpuMeter(pids) as cpu:
        started = time.monotonic()
        clients.popen.stdin.write(f"run {seconds}\n".encode())
        clients.popen.stdin.flush()
        m = clients.wait_for(r"^rtts (.*)$", seconds + 60)
        elapsed = time.monotonic() - started
    percent = {role: 100 * used / elapsed for role, used in cpu.used.items()}
    print(
        f"  CPU % of one core: {', '.join(f'{r} {v:.1f}' for r, v in percent.items())}; "
        f"{stats.load_line()}",
        flush=True,
    )
    return json.loads(m.group(1)), percent


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench relay-load", description=__doc__.split("\n")[0])
    p.add_argument("--idle", type=int, default=IDLE, help=f"idle agents (default {IDLE})")
    p.add_argument("--active", type=int, default=ACTIVE, help=f"active sessions ({ACTIVE})")
    p.add_argument("--seconds", type=float, default=PHASE_S, help="length of each phase")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    p.add_argument("--keep-logs", action="store_true", help="keep relay and driver logs")
    args = p.parse_args(argv)
    if args.idle < 1 or args.active < 1 or args.seconds <= 0:
        p.error("--idle and --active must be at least 1, --seconds positive")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    machine = stats.machine_line()
    print(f"relay-load benchmark: {machine}")
    want = args.idle + 2 * args.active + FD_HEADROOM
    nofile = rig.raise_nofile(want)
    if nofile < want - FD_HEADROOM // 2:
        print(
            f"the open-file limit is {nofile}, too low: raise ulimit -Hn or pass a smaller --idle"
        )
        return 2
    import psutil  # test extra; only benchmarks need it

    me = str(Path(__file__).resolve())
    with rig.world(nofile=nofile, relay_args=RELAY_ARGS, keep=args.keep_logs) as w:
        relay = psutil.Process(w.relay.pid)
        rss_start = relay.memory_info().rss
        env = rig.child_env()
        driver = [rig.PY, me, "--driver"]
        agents = w.spawn("agents", [*driver, "agents", w.url, w.token, str(args.active)], env)
        agents.wait_for(r"agents \d+ ready", CONNECT_TIMEOUT_S)
        clients = w.spawn(
            "clients",
            [*driver, "clients", w.url, w.token, str(args.active)],
            env,
            stdin=True,
        )
        clients.wait_for(r"clients \d+ ready", CONNECT_TIMEOUT_S)
        pids = {"relay": w.relay.pid, "agents": agents.pid, "clients": clients.pid}
        phase(clients, pids, WARMUP_S)
        print(f"baseline: {args.active} active sessions for {args.seconds:g} s", flush=True)
        base, base_cpu = phase(clients, pids, args.seconds)
        rss_base = relay.memory_info().rss
        drivers = relay_rss.Drivers(w, relay_rss.DRIVERS)
        try:
            held, seconds = drivers.hold(args.idle)
            if held < args.idle:
                raise RuntimeError(f"the drivers hold {held} of {args.idle} idle agents")
            print(f"{held} idle agents connected in {seconds:.1f} s", flush=True)
            rss_idle = relay_rss.settled_rss(w.relay.pid)
            for i, proc in enumerate(drivers.procs):
                pids[f"idle{i}"] = proc.pid
            # The rush of connections makes the garbage collector scan everything
            # (see docs/benchmarks.md): a warm-up phase shows those pauses, apart.
            print("warm-up after the idle agents connected", flush=True)
            settle, _ = phase(clients, pids, WARMUP_S)
            print(f"loaded: the same, beside {held:,} idle agents", flush=True)
            loaded, loaded_cpu = phase(clients, pids, args.seconds)
            rss_loaded = relay.memory_info().rss
        finally:
            drivers.stop()
        clients.popen.stdin.write(b"stop\n")  # type: ignore[union-attr]
        clients.popen.stdin.flush()  # type: ignore[union-attr]
    pct = stats.percentile
    stalls = sum(1 for x in base + loaded if x >= STALL_S * 1e6)
    rows = [
        Row("round trip p50", pct(loaded, 50), "us", pct(base, 50), digits=0),
        Row("round trip p99", pct(loaded, 99), "us", pct(base, 99), P99_TARGET, digits=0),
        Row("round trip max", max(loaded), "us", max(base), digits=0),
        Row("round trip max, warm-up after connecting", max(settle), "us", digits=0),
        Row("relay CPU, % of one core", loaded_cpu["relay"], "%", base_cpu["relay"]),
        Row(
            "relay CPU per round trip",
            loaded_cpu["relay"] * args.seconds * 1e4 / len(loaded),
            "us",
            base_cpu["relay"] * args.seconds * 1e4 / len(base),
            digits=0,
        ),
        Row("relay RSS", rss_loaded / MiB, "MiB", rss_base / MiB),
        Row(
            f"relay RSS per idle agent ({args.idle:,})",
            (rss_idle - rss_base) / args.idle / 1024,
            "KiB",
        ),  # fmt: skip
        Row("relay RSS at start", rss_start / MiB, "MiB"),
    ]
    ok = stats.print_table(
        f"relay-load: {args.active} active 64-byte echo sessions (every {INTERVAL_S:g} s each), "
        f"with {args.idle:,} idle agents",
        "baseline (no idle agents)",
        rows,
    )
    print(
        f"  {len(base)} + {len(loaded)} round trips, {stalls} over {STALL_S:g} s; "
        f"{stats.load_line()} after the run"
    )
    if args.json:
        extra = {"idle": args.idle, "active": args.active, "interval_s": INTERVAL_S}
        stats.write_json(args.json, "relay-load", machine, rows, extra)
    return 1 if args.check and (not ok or stalls) else 0


if __name__ == "__main__":  # a driver, started by main() above
    if sys.argv[1:2] != ["--driver"]:
        sys.exit("run this benchmark as: scripts/bench relay-load")
    sys.exit(driver_main(sys.argv[2:]))
