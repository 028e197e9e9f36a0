"""`scripts/bench continuity`: a serial monitor through outages, line by line.

A numbered-line board (``tests/e2e/ptydev.py counter``: a line every 10 ms,
``open N`` on each open of its port) is watched by one monitor (the client
library, ``open_monitor``) through five events in a row: a relay restart, a
relay SIGKILL and restart, the client's path cut for 5 s, the agent's path cut
for 5 s (both through a proxy that drops its connections and refuses new ones),
and an agent restart. For each: the lines lost, duplicated or reordered, the
time from the path's return to the monitor being back, whether the port was
reopened, and whether a key typed during the gap reached the board.

Baseline, in the same run: the same events with ``monitor_grace_seconds = 0``,
the agent closing the port when a session is lost (the behaviour before
continuity). Targets: 0 lines lost, duplicated or reordered; back within 1 s;
for the agent restart, which loses the ring with the process, the loss is
reported (one line) rather than silent.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import harness.rig as bench_rig
import trio
from harness import stats
from harness.rig import PY, ROOT
from harness.stats import AT_MOST, Row, Target

sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from numbered import tally  # noqa: E402
from wsproxy import Proxy  # noqa: E402

from pio_remote.client.monitor.items import Reconnected, ResumeLost  # noqa: E402
from pio_remote.client.monitor.remote import Monitor, open_monitor  # noqa: E402

PTYDEV = ROOT / "tests" / "e2e" / "ptydev.py"
AGENT = "bench-continuity"
OUTAGE_S = 5.0
SETTLE_S = 0.5  # lines before and after each event
EVENT_TIMEOUT_S = 60.0
GRACE_S = 60

LOST_TARGET = Target(AT_MOST, 0, "lines")
BACK_TARGET = Target(AT_MOST, 1.0, "s")


@dataclass
class Outcome:
    lost: int
    duplicated: int
    reordered: int
    back: float
    reopened: bool
    key_reached_board: bool
    loss_reported: bool


@dataclass
class Rig:
    world: bench_rig.World
    board: Path
    client_proxy: Proxy
    agent_proxy: Proxy
    agent: bench_rig.Proc | None = None

    def start_agent(self) -> None:
        env = self.world.client_env()
        env["PIO_REMOTE_RELAY"] = self.agent_proxy.url
        argv = [PY, "-m", "pio_remote", "agent", "start", "-n", AGENT, "--log-level", "warning"]
        self.agent = self.world.spawn("agent", [*argv, "--port-glob", str(self.board)], env)
        self.agent.wait_for(r"agent \S+ online")

    def stop_relay(self, sig: int = signal.SIGTERM) -> None:
        self.world.relay.stop(sig)

    def start_relay(self) -> None:
        self.world.restart_relay()


def make_rig(w: bench_rig.World, grace: int) -> Rig:
    (w.home / "agent.toml").write_text(f"monitor_grace_seconds = {grace}\n")
    port = int(w.url.rsplit(":", 1)[1])
    board = w.workdir / "board"
    dev = w.spawn("board", [PY, str(PTYDEV), "counter", str(board)], bench_rig.child_env())
    dev.wait_for("ptydev")
    rig = Rig(w, board, Proxy(port), Proxy(port))
    rig.start_agent()
    return rig


class Watch:
    """The monitor's output and notices, as they come."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.reconnected = trio.Event()
        self.reconnected_at = 0.0
        self.resume_lost = 0
        self.grew = trio.Event()

    async def pump(self, mon: Monitor) -> None:
        while (item := await mon.receive()) is not None:
            if isinstance(item, bytes):
                self.data += item
                self.grew.set()
                self.grew = trio.Event()
            elif isinstance(item, Reconnected):
                self.reconnected_at = trio.current_time()
                self.reconnected.set()
            elif isinstance(item, ResumeLost):
                self.resume_lost += 1

    async def until(self, pattern: bytes) -> None:
        while pattern not in self.data:
            await self.grew.wait()


async def one_event(
    mon: Monitor,
    watch: Watch,
    key: bytes,
    cut: Callable[[], None],
    restore: Callable[[], None],
    outage: float,
) -> Outcome:
    await trio.sleep(SETTLE_S)
    start = len(watch.data)
    before = tally(bytes(watch.data)).numbers[-1]
    reported_before = watch.resume_lost
    watch.reconnected = trio.Event()
    await trio.to_thread.run_sync(cut)
    while mon.connected:
        await trio.sleep(0.01)  # the client notices the loss (a lost connection, a closed session)
    await mon.send(b"during\n")  # into the gap: must be dropped, not sent later
    await trio.sleep(outage)
    await trio.to_thread.run_sync(restore)
    restored = trio.current_time()
    await watch.reconnected.wait()
    back = watch.reconnected_at - restored
    await mon.send(b"after-" + key + b"\n")
    await watch.until(b"rx:after-" + key + b"\n")
    await trio.sleep(SETTLE_S)
    segment = tally(bytes(watch.data[start:]))
    lost = len(set(range(before + 1, segment.numbers[-1] + 1)) - set(segment.numbers))
    return Outcome(
        lost=lost,
        duplicated=segment.duplicated,
        reordered=segment.reordered,
        back=back,
        reopened=segment.opens > 0,
        key_reached_board=b"during" in segment.received,
        loss_reported=watch.resume_lost > reported_before,
    )


async def drive(rig: Rig) -> dict[str, Outcome]:
    w = bench_rig.world

    def relay_kill() -> None:
        rig.stop_relay(signal.SIGKILL)

    def agent_stop() -> None:
        assert rig.agent is not None
        rig.agent.stop()

    events: list[tuple[str, Callable[[], None], Callable[[], None], float]] = [
        ("relay restart", rig.stop_relay, rig.start_relay, 0.0),
        ("relay SIGKILL", relay_kill, rig.start_relay, 0.0),
        ("client path, 5 s", rig.client_proxy.cut, rig.client_proxy.restore, OUTAGE_S),
        ("agent path, 5 s", rig.agent_proxy.cut, rig.agent_proxy.restore, OUTAGE_S),
        ("agent restart", agent_stop, rig.start_agent, 0.0),
    ]
    results: dict[str, Outcome] = {}
    watch = Watch()
    connect = {"relay": rig.client_proxy.url, "token": w.token, "home_path": w.home}
    with trio.fail_after(EVENT_TIMEOUT_S * len(events)):
        async with (
            open_monitor(AGENT, str(rig.board), **connect) as mon,  # type: ignore[arg-type]
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(watch.pump, mon)
            await watch.until(b"open 1\n")
            for i, (name, cut, restore, outage) in enumerate(events):
                key = b"%d" % i
                results[name] = await one_event(mon, watch, key, cut, restore, outage)
                print(f"  {name}: {results[name]}", flush=True)
            nursery.cancel_scope.cancel()
    return results


def run_mode(grace: int, keep: bool) -> dict[str, Outcome]:
    with bench_rig.world(keep=keep) as w:
        rig = make_rig(w, grace)
        try:
            return trio.run(drive, rig)
        finally:
            rig.client_proxy.close()
            rig.agent_proxy.close()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench continuity", description=__doc__)
    parser.add_argument("--keep-logs", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    print(f"continuity benchmark: {stats.machine_line()}", flush=True)
    print(f"with continuity (monitor_grace_seconds = {GRACE_S}):", flush=True)
    ours = run_mode(GRACE_S, args.keep_logs)
    print("baseline (monitor_grace_seconds = 0, the port closed with the session):", flush=True)
    base = run_mode(0, args.keep_logs)
    rows: list[Row] = []
    for name, got in ours.items():
        was = base[name]
        restart = name == "agent restart"  # the ring dies with the process: reported, not kept
        rows += [
            Row(
                f"{name}: lines lost",
                got.lost,
                "lines",
                was.lost,
                None if restart else LOST_TARGET,
                0,
            ),
            Row(
                f"{name}: duplicated+reordered",
                got.duplicated + got.reordered,
                "lines",
                was.duplicated + was.reordered,
                LOST_TARGET,
                0,
            ),
            Row(f"{name}: back after return", got.back, "s", was.back, BACK_TARGET, 2),
            Row(f"{name}: port reopened", int(got.reopened), "", int(was.reopened), None, 0),
            Row(
                f"{name}: gap key reached board",
                int(got.key_reached_board),
                "keys",
                int(was.key_reached_board),
                Target(AT_MOST, 0, "keys"),
                0,
            ),
        ]
        if restart:
            rows.append(Row(f"{name}: loss reported", int(got.loss_reported), "", None, None, 0))
    ok = stats.print_table("monitor continuity", "grace 0", rows)
    print(f"\n{stats.load_line()}")
    return 0 if ok else 1
