"""`scripts/bench slow-consumer`: one stopped client must not slow the agent's other clients.

Real processes: a relay, an agent, and two clients of that agent. One client
(tests/e2e/streamclient.py) reads fast streams (``diag.source`` on many calls)
and is then stopped with SIGSTOP, as a laptop lid closes. The other client (this
process) times 64-byte ``diag.echo`` round trips:

1. **baseline**: with no stream at all;
2. **stopped**: from the moment the streaming client is stopped.

Target: p99 while the other client is stopped <= 2x the baseline's, and no
round trip over STALL_S. It also reports whether the relay closed the stopped
client's session as ``slow_consumer`` and the relay's RSS before and after.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import urllib.request
from pathlib import Path
from time import perf_counter

import trio
from harness import rig, stats
from harness.rig import MiB
from harness.stats import AT_MOST, Row, Target

from pio_remote.client.api import Client, wait_result

AGENT = "bench-slow"
STREAMS = 48
COUNT = 2000
WARMUP = 200
MESSAGE = bytes(range(64))
STALL_S = 1.0
# Small enough that the stopped client's streams overflow it (as in the test).
RELAY_ARGS = ("--send-queue-bytes", "1MiB", "--slow-consumer-grace", "1")
STREAM_CLIENT = rig.ROOT / "tests" / "e2e" / "streamclient.py"
P99_TARGET = Target(AT_MOST, 2.0)


async def echo_times(w: rig.World, count: int, warmup: int) -> list[float]:
    times = []
    with trio.fail_after(120):
        async with (
            Client.connect(w.url, w.token, w.home) as client,
            client.session(AGENT) as session,
            session.open_call("diag.echo") as call,
        ):
            for i in range(warmup + count):
                start = perf_counter()
                await call.send(MESSAGE)
                got = 0
                while got < len(MESSAGE):
                    item = await call.receive()
                    assert isinstance(item, bytes), item
                    got += len(item)
                if i >= warmup:
                    times.append(perf_counter() - start)
            await call.send_eof()
            await wait_result(call)
    return times


def shed_count(w: rig.World) -> float:
    with urllib.request.urlopen(w.metrics_request(), timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith('relay_drops_total{reason="slow_consumer"} '):
                return float(line.split()[-1])
    return 0.0


def main(argv: list[str]) -> int:
    summary = __doc__.split("\n")[0]
    p = argparse.ArgumentParser(prog="scripts/bench slow-consumer", description=summary)
    p.add_argument("--count", type=int, default=COUNT, help=f"round trips per phase ({COUNT})")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    args = p.parse_args(argv)
    machine = stats.machine_line()
    print(f"slow-consumer benchmark: {machine}")
    import psutil  # test extra; only benchmarks need it

    with rig.world(relay_args=RELAY_ARGS) as w:
        relay = psutil.Process(w.relay.pid)
        w.start_agent(AGENT)
        base = trio.run(echo_times, w, args.count, WARMUP)
        rss_before = relay.memory_info().rss
        slow = w.spawn(
            "stream-client", [rig.PY, str(STREAM_CLIENT), AGENT, str(STREAMS)], w.client_env()
        )
        slow.wait_for("streaming", 60)
        os.kill(slow.pid, signal.SIGSTOP)
        try:
            stopped = trio.run(echo_times, w, args.count, 0)
            rss_after = relay.memory_info().rss
            shed = shed_count(w)
        finally:
            os.kill(slow.pid, signal.SIGCONT)
        try:  # it reads what is left, then ends with the relay's reason
            slow.popen.wait(30)
        except subprocess.TimeoutExpired:
            pass  # World.close() stops it; its last line says what it was doing
        said = slow.stderr_tail().strip().splitlines()[-1:] or ["(nothing)"]
    us = [x * 1e6 for x in base], [x * 1e6 for x in stopped]
    pct = stats.percentile
    stalls = sum(1 for x in stopped if x >= STALL_S)
    rows = [
        Row("round trip p50", pct(us[1], 50), "us", pct(us[0], 50), digits=0),
        Row("round trip p99", pct(us[1], 99), "us", pct(us[0], 99), P99_TARGET, digits=0),
        Row("round trip max", max(us[1]), "us", max(us[0]), digits=0),
        Row("relay RSS", rss_after / MiB, "MiB", rss_before / MiB),
        Row("sessions closed as slow_consumer", shed, "", digits=0),
    ]
    ok = stats.print_table(
        "slow-consumer: 64-byte echo while another client of the agent is stopped",
        "baseline (no stream)",
        rows,
    )
    print(f"  {stalls} round trips over {STALL_S:g} s; the stopped client said: {said[0]}")
    print(f"  {stats.load_line()} after the run")
    if args.json:
        stats.write_json(args.json, "slow-consumer", machine, rows, {"streams": STREAMS})
    return 1 if args.check and (not ok or stalls or shed != 1) else 0
