"""`scripts/bench farm`: one test run on 16 QEMU boards at once, against the same on 1 board.

What is timed is what `pio-remote test --firmware FILE` does after Python has
started: connect to the relay, open a session per agent, send the image once
per agent, then on every board at once flash it (the vboard uploader, a real
process per board), open the test port (which resets the board), and read
its Unity report to the summary. The baseline is the same run on one board of
the same farm, in the same process and the same minute. Target: 16 boards
<= 1.5x the time of one.

Also printed: the agent's own CPU% and peak RSS during the 16-board run, the
CPU its uploader children used, and the same run spread over two agents with
8 boards each.

The floor (farm_floor.py): in the same run, the same uploaders and boards
driven directly, every board at once, without pio-remote. Target: the
16-board run <= 1.15x that floor. Printed with it: pio-remote's own CPU per
board (agent and client processes; not the uploaders' or the boards').
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from time import perf_counter, process_time

import psutil
import trio
from farm_floor import direct_run
from harness import rig, stats
from harness.stats import AT_MOST, Row, Target

from pio_remote.client import farm
from pio_remote.client import upload as flash
from pio_remote.client.api import Client
from pio_remote.vboard import FIRMWARE_V1, BoardFarm
from pio_remote.wire.unity import PASSED

BOARDS = 16
TARGET = Target(AT_MOST, 1.5)
FLOOR_TARGET = Target(AT_MOST, 1.15)
RUN_TIMEOUT_S = 180.0
AGENT_TOML = """\
[[uploader]]
ports = "{farm}/board*"
command = "{py} -m pio_remote.vboard upload $UPLOAD_PORT $SOURCE"
"""


def half_home(client_home: Path, home: Path, vb: Path, boards: range) -> Path:
    """A home for an agent serving some of the boards: the client's key (so the client
    needs no pairing) and an agent.toml whose [[uploader]] claims only those boards (an
    absolute uploader glob is what the agent lists, so one agent.toml cannot split them)."""
    home.mkdir(mode=0o700)
    shutil.copy2(client_home / "identity.key", home / "identity.key")
    globs = ", ".join(f'"{vb}/board{k}"' for k in boards)
    toml = AGENT_TOML.replace('ports = "{farm}/board*"', f"ports = [{globs}]")
    (home / "agent.toml").write_text(toml.format(py=rig.PY))
    return home


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench farm", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3, help="repetitions per figure (median)")
    p.add_argument("--boards", type=int, default=BOARDS)
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--keep-logs", action="store_true")
    return p.parse_args(argv)


# Where the time of each 16-board run went (seconds from its start): sessions up,
# image staged on the agent, first board done, last board done.
PHASES: list[dict[str, float]] = []


async def one_run(w: rig.World, agents: list[str], port: str, upload: bool = True) -> float:
    """One `test --firmware` run on every board ``port`` selects; returns seconds."""
    suite = farm.Suite("bench", "blink-v1", [FIRMWARE_V1], project_env=False)
    options = farm.RunOptions(timeout=60.0, without_uploading=not upload)
    start = perf_counter()
    phases: dict[str, float] = {}
    async with (
        flash.Hashes([FIRMWARE_V1]) as hashes,
        Client.connect(w.url, w.token, home_path=w.home) as client,
        AsyncExitStack() as stack,
    ):
        sessions = [await stack.enter_async_context(client.session(a)) for a in agents]
        phases["sessions"] = perf_counter() - start
        reports = []

        def board_done() -> None:
            phases.setdefault("first board", perf_counter() - start)
            phases["last board"] = perf_counter() - start

        async with trio.open_nursery() as nursery:
            for agent in sessions:
                boards = await farm.find_boards(agent, agent.agent_id, port)
                options.farm = options.farm or len(boards) > 1
                files = await farm.stage_suite(agent, suite, hashes)
                phases["staged"] = perf_counter() - start

                upload = farm.upload_params(suite, files)

                async def board_task(agent=agent, board=None, upload=upload) -> None:
                    reports.append(await farm.run_on_board(agent, board, suite, upload, options))
                    board_done()

                for board in boards:
                    nursery.start_soon(board_task, agent, board, upload)
    elapsed = perf_counter() - start
    PHASES.append(phases | {"end": elapsed})
    bad = [
        f"{r.full_name} port={r.port!r} test_port={r.test_port!r}: {r.error}"
        for r in reports
        if r.status != PASSED
    ]
    if bad or not reports:
        raise SystemExit(f"benchmark run failed on {bad or 'no boards'}")
    return elapsed


class AgentMeter:
    """CPU% and peak RSS of agent processes over a block, sampled by a thread; and the
    CPU the emulated boards used meanwhile (the farm process and its QEMUs)."""

    def __init__(self, pids: list[int], farm_pid: int, relay_pid: int):
        self.procs = [psutil.Process(p) for p in pids]
        self.farm = psutil.Process(farm_pid)
        self.relay = psutil.Process(relay_pid)
        self.peak_rss = 0
        self._stop = threading.Event()

    def _cpu(self) -> tuple[float, float, float]:
        own = children = 0.0
        for p in self.procs:
            t = p.cpu_times()
            own += t.user + t.system
            children += t.children_user + t.children_system
        return own, children, self._boards_cpu()

    def _boards_cpu(self) -> float:
        t = self.farm.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in self.farm.children(recursive=True):
            try:
                c = child.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += c.user + c.system
        return total

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_rss = max(self.peak_rss, sum(p.memory_info().rss for p in self.procs))

    def _others(self) -> tuple[float, float]:
        """CPU of the client (this process) and of the relay."""
        t = self.relay.cpu_times()
        return process_time(), t.user + t.system

    def __enter__(self) -> AgentMeter:
        self.peak_rss = sum(p.memory_info().rss for p in self.procs)
        self._start = (perf_counter(), *self._cpu())
        self._others_start = self._others()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        wall, own, children, boards = perf_counter(), *self._cpu()
        self.wall = wall - self._start[0]
        self.own_cpu = own - self._start[1]
        self.children_cpu = children - self._start[2]
        # QEMUs that exited (rebooted) were reaped by the farm: children_*; live ones
        # count as they are. A reboot replaces a process, so this is approximate.
        self.boards_cpu = max(0.0, boards - self._start[3])
        client, relay = self._others()
        self.client_cpu = client - self._others_start[0]
        self.relay_cpu = relay - self._others_start[1]

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.own_cpu / self.wall


def measure(run: Callable[[], float], runs: int) -> list[float]:
    return [run() for _ in range(runs)]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if shutil.which("qemu-system-arm") is None:
        print("farm benchmark: qemu-system-arm is missing (apt-get install qemu-system-arm)")
        return 1
    machine = stats.machine_line()
    print(f"farm benchmark: {machine}")
    half = args.boards // 2
    with (
        tempfile.TemporaryDirectory(prefix="pio-bench-farm-") as tmp,
        BoardFarm(Path(tmp) / "vb", count=args.boards, firmware=FIRMWARE_V1) as boards,
        rig.world(keep=args.keep_logs) as w,
    ):
        vb = Path(tmp) / "vb"
        (w.home / "agent.toml").write_text(AGENT_TOML.format(farm=vb, py=rig.PY))
        one_agent = w.start_agent("farm-all", "--port-glob", f"{vb}/board*")
        halves = [
            w.start_agent(f"farm-{i}", home=half_home(w.home, Path(tmp) / f"home-{i}", vb, ks))
            for i, ks in enumerate((range(half), range(half, args.boards)))
        ]
        print(f"{args.boards} boards, {args.runs} runs per figure", flush=True)

        def run(agents: list[str], port: str, upload: bool = True) -> Callable[[], float]:
            return lambda: trio.run(one_run, w, agents, port, upload)

        run(["farm-all"], boards.port(0))()  # warm up: cache, sessions, page cache
        single = measure(run(["farm-all"], boards.port(0)), args.runs)
        ports = [boards.port(i) for i in range(args.boards)]
        direct_run(ports, FIRMWARE_V1)  # warm up the floor the same way
        # The floor just before and just after the measured farm runs: the load on a
        # shared machine drifts, and both sides should see the same.
        floor = measure(lambda: direct_run(ports, FIRMWARE_V1), args.runs)
        with AgentMeter([one_agent.pid], boards.proc.pid, w.relay.pid) as meter:
            PHASES.clear()
            many = measure(run(["farm-all"], ""), args.runs)
            phases = list(PHASES)
        floor += measure(lambda: direct_run(ports, FIRMWARE_V1), args.runs)
        with AgentMeter([p.pid for p in halves], boards.proc.pid, w.relay.pid) as meter2:
            split = measure(run(["farm-0", "farm-1"], ""), args.runs)
        # Without the uploader processes: reset and Unity report only.
        single_read = measure(run(["farm-all"], boards.port(0), False), args.runs)
        many_read = measure(run(["farm-all"], "", False), args.runs)
    one, sixteen, two, one_read, sixteen_read = (
        stats.median(x) * 1000 for x in (single, many, split, single_read, many_read)
    )
    rows = [
        Row(f"{args.boards} boards, one agent", sixteen, "ms", one, TARGET),
        Row(f"{args.boards} boards, two agents of {half}", two, "ms", one),
        Row(f"{args.boards} boards, test phase only", sixteen_read, "ms", one_read),
    ]
    ok = stats.print_table(
        "farm: one test run (flash, reset, Unity report); last row without flashing",
        "1 board",
        rows,
    )
    floor_ms = stats.median(floor) * 1000
    floor_row = Row(f"{args.boards} boards, pio-remote", sixteen, "ms", floor_ms, FLOOR_TARGET)
    ok = (
        stats.print_table(
            "farm: the same boards and uploaders driven directly, without pio-remote",
            "floor",
            [floor_row],
        )
        and ok
    )
    per_board = (meter.own_cpu + meter.client_cpu) / (args.boards * args.runs)
    print(
        f"  pio-remote's own CPU per board: {per_board * 1000:.0f} ms (agent "
        f"{meter.own_cpu:.2f} s + client {meter.client_cpu:.2f} s over {args.runs} runs of "
        f"{args.boards} boards); floor runs: "
        + ", ".join(f"{x * 1000:.0f}" for x in floor)
        + " ms; pio-remote runs: "
        + ", ".join(f"{x * 1000:.0f}" for x in many)
        + " ms"
    )
    print(
        f"  where a {args.boards}-board pio-remote run's time goes (median s from its start): "
        + ", ".join(
            f"{k} {stats.median([p[k] for p in phases if k in p]):.2f}"
            for k in ("sessions", "staged", "first board", "last board", "end")
        )
    )
    for label, m in ((f"one agent, {args.boards} boards", meter), ("two agents", meter2)):
        print(
            f"  {label}: agent CPU {m.cpu_percent:.0f}% of one core "
            f"({m.own_cpu:.2f} s over {m.wall:.1f} s), peak RSS {m.peak_rss / 2**20:.1f} MiB, "
            f"uploader processes {m.children_cpu:.2f} CPU s, emulated boards "
            f"{m.boards_cpu:.2f} CPU s, client {m.client_cpu:.2f} CPU s, relay "
            f"{m.relay_cpu:.2f} CPU s ({args.runs} runs, {psutil.cpu_count()} cores)"
        )
    print(f"  ({stats.load_line()} at the end)")
    if args.json:
        stats.write_json(
            args.json,
            "farm",
            machine,
            [*rows, floor_row],
            {"boards": args.boards, "cpu_per_board_s": round(per_board, 4)},
        )
    return 1 if args.check and not ok else 0
