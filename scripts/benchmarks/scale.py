"""`scripts/bench scale`: 1 relay node against 3 nodes behind HAProxy with PostgreSQL.

The same load on both: ``--idle`` idle agents (HELLO, then only keepalive
answers) and ``--active`` echo sessions (an agent echoing, a client sending 64
bytes every 0.1 s and timing the echo), all on ``pio_remote.net.link`` without
Noise, so the figures are the relay's and HAProxy's. Every connection carries
``?agent=OWNER/NAME``, so HAProxy puts each session's two ends on one node.

1. **baseline**: one ``relay serve`` with its SQLite accounts, no HAProxy;
2. **cluster**: three ``relay serve --database --node-id`` behind HAProxy
   (docs/haproxy.cfg), accounts and presence in a throwaway PostgreSQL.

It reports the active sessions' round trip p50/p99 (and the ratio to the
baseline), CPU and RSS per node, and PostgreSQL transactions per second
(``pg_stat_database``). On a 2-core machine three nodes cannot be faster than
one; the point is what HAProxy and PostgreSQL add. Target: p50 <= 1.3x.

Bounded: every step has a deadline, drivers exit on their own, 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio
from harness import cpumeter, echoloop, rig, stats
from harness.rig import MiB
from harness.stats import AT_MOST, Row, Target

from pio_remote.net import link
from pio_remote.wire import envelope
from pio_remote.wire.envelope import FrameType

sys.path.insert(0, str(rig.ROOT / "tests" / "scale"))
from haproxykit import HAPROXY, HAProxy  # noqa: E402
from pgkit import PgCluster, find_pg_bin  # noqa: E402

IDLE = 1000
ACTIVE = 50
INTERVAL_S = 0.1
PHASE_S = 10.0
WARMUP_S = 2.0
MESSAGE = 64
ACCOUNT = "bench"
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
DRIVER_LIFETIME_S = 600.0
FD_HEADROOM = 256
P50_TARGET = Target(AT_MOST, 1.3)
# (label, nodes, PostgreSQL and HAProxy): the baseline, the cluster, and one
# node behind HAProxy with PostgreSQL, which tells HAProxy's hop from the split.
SETUPS = (("1 node", 1, False), ("3 nodes", 3, True), ("1 node via HAProxy", 1, True))


# ---- drivers (child processes) ------------------------------------------------------------


def driver_main(argv: list[str]) -> int:
    role, url, token, active, idle = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    rig.raise_nofile(2 * (active + idle) + FD_HEADROOM)
    fn = _agents if role == "agents" else _clients
    trio.run(_bounded, fn, url, token, active, idle)
    return 0


async def _bounded(fn: object, *args: object) -> None:
    with trio.move_on_after(DRIVER_LIFETIME_S):
        await fn(*args)  # type: ignore[operator]


async def _agents(url: str, token: str, active: int, idle: int) -> None:
    """``active`` echoing agents act-NNNN and ``idle`` agents idle-NNNNN."""

    async def agent(name: str, task_status: trio.TaskStatus[None]) -> None:
        hello = {"role": "agent", "name": name, "shares": [], "key": os.urandom(32).hex()}
        params = {"agent": f"{ACCOUNT}/{name}"}
        async with link.connect(url, token, hello, params) as lnk:
            send, receive = trio.open_memory_channel[tuple[int, bytes]](64)

            def on_open(channel: int, account: str) -> None:
                def echo(frame: envelope.Frame) -> None:
                    if frame.type is FrameType.DATA:
                        send.send_nowait((frame.channel, frame.payload))

                lnk.register(channel, echo)

            lnk.on_open = on_open
            task_status.started()
            async for channel, payload in receive:
                await lnk.send_data(channel, payload)

    async with trio.open_nursery() as nursery:
        with trio.fail_after(CONNECT_TIMEOUT_S):
            for index in range(active):
                await nursery.start(agent, f"act-{index:04d}")
            for index in range(idle):
                await nursery.start(agent, f"idle-{index:05d}")
        print(f"agents {active} + {idle} ready", flush=True)


async def _clients(url: str, token: str, active: int, idle: int) -> None:
    """One client per active agent; ``run SECONDS`` on stdin measures round trips."""
    del idle
    links: list[tuple[link.Link, int]] = []
    replies: list[trio.MemoryReceiveChannel[float]] = []

    async def client(index: int, task_status: trio.TaskStatus[None]) -> None:
        ref = f"{ACCOUNT}/act-{index:04d}"
        async with link.connect(url, token, {"role": "client"}, {"agent": ref}) as lnk:
            send, receive = trio.open_memory_channel[float](1)

            def on_frame(frame: envelope.Frame) -> None:
                if frame.type is FrameType.DATA:
                    send.send_nowait(time.perf_counter())

            channel, _ = await lnk.open_channel(ref, on_frame)
            links.append((lnk, channel))
            replies.append(receive)
            task_status.started()
            await trio.sleep_forever()

    async def measure(index: int, seconds: float, rtts: list[float]) -> None:
        (lnk, channel), reply = links[index], replies[index]
        payload = bytes(MESSAGE)
        next_at = trio.current_time() + random.uniform(0, INTERVAL_S)
        end = trio.current_time() + seconds
        while next_at < end:
            await trio.sleep_until(next_at)
            start = time.perf_counter()
            await lnk.send_data(channel, payload)
            with trio.fail_after(30):
                back = await reply.receive()
            rtts.append(back - start)
            next_at = max(next_at + INTERVAL_S, trio.current_time())

    async with trio.open_nursery() as nursery:
        with trio.fail_after(CONNECT_TIMEOUT_S):
            for index in range(active):
                await nursery.start(client, index)
        print(f"clients {active} ready", flush=True)
        await echoloop.serve_echo_runs(active, measure)
        nursery.cancel_scope.cancel()


# ---- one setup ------------------------------------------------------------------------------


class Setup:
    """Relay nodes (and HAProxy, PostgreSQL) plus the two drivers; ``close()`` stops all."""

    def __init__(
        self, workdir: Path, nofile: int, pg: PgCluster | None, nodes: int, proxy: bool
    ) -> None:
        self.workdir = workdir
        self.procs: list[rig.Proc] = []
        self.nodes: dict[str, rig.Proc] = {}
        self.proxy: HAProxy | None = None
        self.pg = pg
        self.dsn = pg.create_database(f"bench_{nodes}_{os.getpid()}") if pg else None
        env = rig.child_env(workdir / "relay-home")
        store = ["--data-dir", str(workdir / "data")]
        if self.dsn:
            self._cli(["db", "upgrade", "--database", self.dsn], env)
            store = ["--database", self.dsn]
        self.token = self._cli(["user", "add", ACCOUNT, *store], env).strip().splitlines()[-1]
        ports = {}
        for i in range(1, nodes + 1):
            node = f"n{i}"
            args = [rig.PY, "-m", "pio_remote.relay", "serve", "--bind", "127.0.0.1:0", *store]
            if self.dsn:
                args += ["--node-id", node]
            proc = self.spawn(node, [*args, *RELAY_ARGS], env, nofile)
            url = proc.wait_for(r"relay listening on (ws://\S+)").group(1)
            self.nodes[node] = proc
            ports[node] = int(url.rsplit(":", 1)[1])
        if proxy:
            self.proxy = HAProxy(workdir, ports)
            self.url = self.proxy.url
        else:
            self.url = f"ws://127.0.0.1:{ports['n1']}"

    def _cli(self, args: list[str], env: dict[str, str]) -> str:
        import subprocess

        return subprocess.run(
            [rig.PY, "-m", "pio_remote.relay", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout

    def spawn(
        self, label: str, args: list[str], env: dict[str, str], nofile: int = 0, stdin: bool = False
    ) -> rig.Proc:
        proc = rig.Proc(args, env, self.workdir / f"{label}.log", nofile=nofile, stdin=stdin)
        self.procs.append(proc)
        return proc

    def db_transactions(self) -> int:
        if self.pg is None or self.dsn is None:
            return 0
        import psycopg

        with psycopg.connect(self.pg.dsn()) as conn:
            row = conn.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                (self.dsn.split("///")[1].split("?")[0],),
            ).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        if self.proxy is not None:
            self.proxy.stop()


def run_setup(setup: Setup, args: argparse.Namespace, nofile: int) -> dict[str, object]:
    """Start the drivers, warm up, measure; returns the figures of this setup."""
    import psutil  # test extra; only benchmarks need it

    me = str(Path(__file__).resolve())
    env = rig.child_env()
    counts = [str(args.active), str(args.idle)]
    driver = [rig.PY, me, "--driver"]
    agents = setup.spawn(
        "agents", [*driver, "agents", setup.url, setup.token, *counts], env, nofile
    )
    agents.wait_for(r"agents \d+ \+ \d+ ready", CONNECT_TIMEOUT_S)
    clients = setup.spawn(
        "clients", [*driver, "clients", setup.url, setup.token, *counts], env, nofile, stdin=True
    )
    clients.wait_for(r"clients \d+ ready", CONNECT_TIMEOUT_S)
    pids = {node: proc.pid for node, proc in setup.nodes.items()}
    if setup.proxy is not None:
        pids["haproxy"] = setup.proxy.proc.pid
    _phase(clients, pids, WARMUP_S)
    tx_start = setup.db_transactions()
    started = time.monotonic()
    rtts, cpu = _phase(clients, pids, args.seconds)
    tx_rate = (setup.db_transactions() - tx_start) / (time.monotonic() - started)
    rss = {node: psutil.Process(proc.pid).memory_info().rss for node, proc in setup.nodes.items()}
    clients.write(b"stop\n")
    return {"rtts": rtts, "cpu": cpu, "rss": rss, "tx_rate": tx_rate}


def _phase(
    clients: rig.Proc, pids: dict[str, int], seconds: float
) -> tuple[list[float], dict[str, float]]:
    start = len(clients.lines)  # this phase's answer, not the last one's
    with cpumeter.CpuMeter(pids) as cpu:
        started = time.monotonic()
        clients.write(f"run {seconds}\n".encode())
        m = clients.wait_for(r"^rtts (.*)$", seconds + 60, start=start)
        elapsed = time.monotonic() - started
    return json.loads(m.group(1)), {k: 100 * v / elapsed for k, v in cpu.used.items()}


# ---- the benchmark ----------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench scale", description=__doc__.split("\n")[0])
    p.add_argument("--idle", type=int, default=IDLE, help=f"idle agents (default {IDLE})")
    p.add_argument("--active", type=int, default=ACTIVE, help=f"echo sessions ({ACTIVE})")
    p.add_argument("--seconds", type=float, default=PHASE_S, help="length of each phase")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    p.add_argument("--keep-logs", action="store_true", help="keep node and driver logs")
    args = p.parse_args(argv)
    if args.idle < 0 or args.active < 1 or args.seconds <= 0:
        p.error("--active must be at least 1, --idle not negative, --seconds positive")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    machine = stats.machine_line()
    print(f"scale benchmark: {machine}")
    bin_dir = find_pg_bin()
    if bin_dir is None or HAPROXY is None:
        print("needs PostgreSQL (initdb) and HAProxy: apt-get install postgresql haproxy")
        return 2
    nofile = rig.raise_nofile(4 * (args.idle + args.active) + FD_HEADROOM)
    workdir = Path(tempfile.mkdtemp(prefix="pio-bench-scale-"))
    pg = PgCluster(bin_dir)
    results = {}
    try:
        for label, nodes, use_pg in SETUPS:
            sub = workdir / label.replace(" ", "-")
            sub.mkdir()
            print(f"{label}: {args.idle} idle agents, {args.active} echo sessions", flush=True)
            setup = Setup(sub, nofile, pg if use_pg else None, nodes, proxy=use_pg)
            try:
                results[label] = run_setup(setup, args, nofile)
            finally:
                setup.close()
            print(f"  done; {stats.load_line()}", flush=True)
    finally:
        pg.destroy()
        if args.keep_logs:
            print(f"(logs kept in {workdir})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    one, three = results["1 node"], results["3 nodes"]
    pct = stats.percentile
    r1, r3 = one["rtts"], three["rtts"]  # type: ignore[index]
    rows = [
        Row("round trip p50", pct(r3, 50), "us", pct(r1, 50), P50_TARGET, digits=0),  # type: ignore[arg-type]
        Row("round trip p99", pct(r3, 99), "us", pct(r1, 99), digits=0),  # type: ignore[arg-type]
    ]
    cpu1, cpu3 = one["cpu"], three["cpu"]  # type: ignore[index]
    for node in ("n1", "n2", "n3"):
        base = cpu1.get("n1") if node == "n1" else None  # type: ignore[union-attr]
        rows.append(Row(f"CPU {node}, % of one core", cpu3[node], "%", base))  # type: ignore[index]
    rows.append(Row("CPU haproxy, % of one core", cpu3["haproxy"], "%"))  # type: ignore[index]
    rows.append(
        Row(
            "CPU all nodes, % of one core",
            sum(cpu3[n] for n in ("n1", "n2", "n3")),
            "%",
            cpu1["n1"],
        )
    )  # type: ignore[index]
    rss1, rss3 = one["rss"], three["rss"]  # type: ignore[index]
    for node in ("n1", "n2", "n3"):
        base = rss1["n1"] / MiB if node == "n1" else None  # type: ignore[index]
        rows.append(Row(f"RSS {node}", rss3[node] / MiB, "MiB", base))  # type: ignore[index]
    rows.append(Row("PostgreSQL transactions/s", three["tx_rate"], "/s"))  # type: ignore[arg-type]
    via = results["1 node via HAProxy"]
    rv = via["rtts"]  # type: ignore[index]
    rows.append(Row("round trip p50, 1 node via HAProxy", pct(rv, 50), "us", pct(r1, 50), digits=0))  # type: ignore[arg-type]
    rows.append(Row("round trip p99, 1 node via HAProxy", pct(rv, 99), "us", pct(r1, 99), digits=0))  # type: ignore[arg-type]
    ok = stats.print_table(
        f"scale: {args.active} echo sessions (64 B every {INTERVAL_S:g} s) beside {args.idle:,} "
        "idle agents; 3 nodes behind HAProxy with PostgreSQL",
        "1 node (SQLite)",
        rows,
    )
    print(f"  {len(r1)} + {len(r3)} + {len(rv)} round trips; {stats.load_line()} after the run")
    if args.json:
        extra = {"idle": args.idle, "active": args.active, "interval_s": INTERVAL_S}
        stats.write_json(args.json, "scale", machine, rows, extra)
    return 1 if args.check and not ok else 0


if __name__ == "__main__":  # a driver, started by main() above
    if sys.argv[1:2] != ["--driver"]:
        sys.exit("run this benchmark as: scripts/bench scale")
    sys.exit(driver_main(sys.argv[2:]))
