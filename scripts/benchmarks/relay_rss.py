"""`scripts/bench relay-rss`: relay memory per idle agent connection.

A relay's job at rest is to hold many agents that say nothing for hours, so
its memory per idle connection decides how many boards one small VM can serve.
This starts a relay with a raised open-file limit, opens 1,000 and then 10,000
agent connections to it (each with its own name, each doing the HELLO/WELCOME
handshake and answering the relay's keepalive PINGs, as agents do), and reports
(RSS with N - RSS with W) / (N - W), where W is one warm-up connection per driver
so that lazy imports and first-use allocations are not spread over the count.
Target: <= 40 KiB per connection.

The connections come from a few driver processes so that the driver's own
memory and CPU stay out of the relay's figures. Only 127.0.0.1 is used, every
step has a deadline, and the drivers exit on their own after DRIVER_LIFETIME_S.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import trio
from harness import rig, stats
from harness.rig import MiB
from harness.stats import AT_MOST, Row, Target

from pio_remote.net import wsclient, wsio
from pio_remote.wire import envelope
from pio_remote.wire.envelope import FrameType

DEFAULT_STEPS = (1000, 10000)
DRIVERS = 2  # one per core: handshakes are CPU-bound in the driver too
# Handshakes in flight per driver; the relay's listen backlog is far larger.
CONCURRENCY = 64
# Seconds for a driver to reach its share of a step (10,000 is ~20 s here).
STEP_TIMEOUT_S = 240.0
# After the last handshake, RSS is sampled until it moves less than this for SETTLE_S.
SETTLE_TOLERANCE = 0.005
SETTLE_S = 2.0
SETTLE_TIMEOUT_S = 30.0
DRIVER_LIFETIME_S = 900.0
# File descriptors beyond the connections: listeners, db, pipes, logs.
FD_HEADROOM = 256

TARGET = Target(AT_MOST, 40.0, "KiB")
# The relay's admission limits off: every connection here comes from 127.0.0.1
# and one account, far faster than the default accept rate.
RELAY_ARGS = (
    *("--accept-rate", "0", "--max-connections-per-ip", "0"),
    *("--accept-rate-per-ip", "0", "--max-pending-per-ip", "0"),
)
RELAY_ARGS += ("--max-connections-per-account", "0")


# ---- driver (a child process) -----------------------------------------------------------


def driver_main(argv: list[str]) -> int:
    """Hold agent connections; stdin says how many ("hold N", "stop"), stdout says when."""
    url, token, prefix = argv
    rig.raise_nofile(1 << 20)
    trio.run(_drive, url, token, prefix)
    return 0


async def _drive(url: str, token: str, prefix: str) -> None:
    state = {"held": 0, "failed": 0}
    limiter = trio.CapacityLimiter(CONCURRENCY)
    with trio.move_on_after(DRIVER_LIFETIME_S):
        async with trio.open_nursery() as nursery:
            started = 0
            stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
            pending = b""
            while chunk := await stdin.receive_some(1024):
                *commands, pending = (pending + chunk).split(b"\n")
                for command in commands:
                    verb, _, arg = command.decode().partition(" ")
                    if verb != "hold":  # "stop", or anything unexpected
                        nursery.cancel_scope.cancel()
                        return
                    begin = time.monotonic()
                    async with trio.open_nursery() as starters:
                        for index in range(started, int(arg)):
                            starters.start_soon(
                                nursery.start,
                                _agent,
                                url,
                                token,
                                f"{prefix}-{index:05d}",
                                limiter,
                                state,
                            )
                        started = max(started, int(arg))
                    print(
                        f"holding {state['held']} failed {state['failed']} in "
                        f"{time.monotonic() - begin:.1f}s",
                        flush=True,
                    )
            nursery.cancel_scope.cancel()  # stdin closed: the benchmark is gone


async def _agent(
    url: str,
    token: str,
    name: str,
    limiter: trio.CapacityLimiter,
    state: dict[str, int],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One idle agent: HELLO, WELCOME, then only PONGs, until cancelled."""
    hello = {
        "version": envelope.PROTOCOL_VERSION,
        "role": "agent",
        "name": name,
        "shares": [],
        "key": os.urandom(32).hex(),
    }
    reported = False
    await limiter.acquire_on_behalf_of(name)  # bounds handshakes in flight, not connections
    try:
        ws = await wsclient.connect(
            url,
            "/v1/agent",
            [("Authorization", f"Bearer {token}")],
            envelope.MAX_FRAME_SIZE,
        )
        try:
            await ws.send(envelope.encode_json(FrameType.HELLO, 0, hello))
            with trio.fail_after(30):
                frame = envelope.decode((await ws.receive())[0])
            if frame.type is not FrameType.WELCOME:
                raise RuntimeError(f"relay answered HELLO with {frame.type.name}")
            limiter.release_on_behalf_of(name)
            state["held"] += 1
            reported = True
            task_status.started()
            try:
                while True:
                    for message in await ws.receive():
                        frame = envelope.decode(message)
                        if frame.type is FrameType.PING:
                            await ws.send(envelope.encode(FrameType.PONG, 0, frame.payload))
            finally:
                state["held"] -= 1
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await ws.aclose()
    except (
        OSError,
        RuntimeError,
        trio.TooSlowError,
        wsclient.ConnectError,
        wsio.Closed,
    ) as exc:
        state["failed"] += 1
        print(f"{name} failed: {type(exc).__name__}: {exc}", flush=True)
    finally:
        if not reported:
            limiter.release_on_behalf_of(name)
            task_status.started()


# ---- the benchmark ------------------------------------------------------------------------


class Drivers:
    """The driver processes, and a way to tell them all how many connections to hold."""

    def __init__(self, w: rig.World, count: int):
        self.procs = [
            w.spawn(
                f"driver{i}",
                [rig.PY, str(Path(__file__).resolve()), "--driver", w.url, w.token, f"rss{i}"],
                rig.child_env(),
                stdin=True,
            )
            for i in range(count)
        ]

    def hold(self, total: int) -> tuple[int, float]:
        """Ask for ``total`` connections across drivers; (held, seconds) once all answer."""
        start = time.monotonic()
        share, extra = divmod(total, len(self.procs))
        for i, proc in enumerate(self.procs):
            assert proc.popen.stdin is not None
            proc.popen.stdin.write(f"hold {share + (i < extra)}\n".encode())
            proc.popen.stdin.flush()
        held = 0
        for proc in self.procs:
            m = proc.wait_for(r"holding (\d+) failed (\d+)", STEP_TIMEOUT_S)
            proc.lines.clear()  # the next step waits for a fresh answer
            held += int(m.group(1))
        return held, time.monotonic() - start

    def stop(self) -> None:
        for proc in self.procs:
            try:
                assert proc.popen.stdin is not None
                proc.popen.stdin.write(b"stop\n")
                proc.popen.stdin.flush()
            except (OSError, ValueError):
                pass  # already gone; World.close() stops it anyway


def settled_rss(pid: int) -> int:
    """The relay's RSS once it stops moving (garbage from handshakes is freed or reused)."""
    import psutil

    proc = psutil.Process(pid)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    last = proc.memory_info().rss
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        rss = proc.memory_info().rss
        if abs(rss - last) > SETTLE_TOLERANCE * last:
            stable_since = time.monotonic()
        last = rss
        if time.monotonic() - stable_since >= SETTLE_S:
            break
    return last


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench relay-rss", description=__doc__.split("\n")[0])
    p.add_argument(
        "--steps",
        default=",".join(map(str, DEFAULT_STEPS)),
        help="connection counts to measure at, ascending (default 1000,10000)",
    )
    p.add_argument("--drivers", type=int, default=DRIVERS, help="driver processes")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    p.add_argument("--keep-logs", action="store_true", help="keep relay and driver logs")
    args = p.parse_args(argv)
    try:
        args.steps = [int(x) for x in args.steps.split(",")]
    except ValueError:
        p.error("--steps takes numbers, e.g. 1000,10000")
    if not args.steps or args.steps != sorted(args.steps) or args.steps[0] < 1:
        p.error("--steps must be positive and ascending")
    if args.drivers < 1:
        p.error("--drivers must be at least 1")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    machine = stats.machine_line()
    print(f"relay-rss benchmark: {machine}")
    biggest = args.steps[-1]
    nofile = rig.raise_nofile(biggest + FD_HEADROOM)
    if nofile < biggest + FD_HEADROOM // 2:
        print(
            f"the open-file limit is {nofile}, too low for {biggest} connections: "
            "raise the hard limit (ulimit -Hn) or pass smaller --steps"
        )
        return 2
    import psutil  # test extra; only benchmarks need it

    rows: list[Row] = []
    with rig.world(nofile=nofile, relay_args=RELAY_ARGS, keep=args.keep_logs) as w:
        cold = psutil.Process(w.relay.pid).memory_info().rss
        drivers = Drivers(w, args.drivers)
        try:
            warm, _ = drivers.hold(args.drivers)  # one each: lazy imports, first-use allocations
            rss0 = settled_rss(w.relay.pid)
            print(
                f"relay pid {w.relay.pid}, open-file limit {nofile}; RSS at start "
                f"{cold / MiB:.1f} MiB, with {warm} warm-up connections {rss0 / MiB:.1f} MiB",
                flush=True,
            )
            rows.append(Row("relay RSS at start", cold / MiB, "MiB"))
            rows.append(Row(f"relay RSS, {warm} connections", rss0 / MiB, "MiB"))
            before = warm
            for step in args.steps:
                held, seconds = drivers.hold(step)
                if held < step:
                    raise RuntimeError(
                        f"the drivers hold {held} of {step} connections: see "
                        "their logs (--keep-logs)"
                    )
                rss = settled_rss(w.relay.pid)
                per_conn = (rss - rss0) / (step - warm) / 1024
                print(
                    f"  {step:>6} connections: RSS {rss / MiB:.1f} MiB, {per_conn:.1f} KiB "
                    f"each; {(step - before) / seconds:.0f} handshakes/s",
                    flush=True,
                )
                before = step
                rows.append(Row(f"relay RSS, {step:,} connections", rss / MiB, "MiB"))
                rows.append(Row(f"RSS per idle agent, {step:,}", per_conn, "KiB", target=TARGET))
        finally:
            drivers.stop()
    ok = stats.print_table("relay-rss: relay memory per idle agent connection", "baseline", rows)
    print(
        f"  (KiB per connection = (RSS with N - RSS with {args.drivers} warm-up connections)"
        f" / (N - {args.drivers}))"
    )
    if args.json:
        stats.write_json(args.json, "relay-rss", machine, rows, {"steps": args.steps})
    return 1 if args.check and not ok else 0


if __name__ == "__main__":  # a driver, started by main() above
    if sys.argv[1:2] != ["--driver"]:
        sys.exit("run this benchmark as: scripts/bench relay-rss")
    sys.exit(driver_main(sys.argv[2:]))
