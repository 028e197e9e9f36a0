"""`scripts/bench wan`: everyday commands over a long path, against OpenSSH over the same path.

Users reach their boards from far away: tens to hundreds of milliseconds
between client and relay, and again between relay and agent. This builds that
path here with tests/delayproxy.py (each chunk delayed by half the round trip,
in order; an optional bandwidth cap; the TCP handshake added back): one proxy
in front of the relay for the client (``--rtt``), one for the agent
(``--agent-rtt``), and one in front of a private sshd with the client's
figures, for the baseline.

It times, through those proxies, what the CLI does after Python has started:
``agent list``, ``device list -a AGENT``, the first byte of ``device monitor``
(a pty board that prints a banner 50 ms after its port opens), and uploads of
1 and 8 MiB (the uploader is ``true``). The baseline is ``ssh host true`` and
``scp`` of the same files. Round trips per command are counted from the client
proxy's trace (delayproxy.Conn.round_trips: each time the client waited for
an answer, the TCP handshake included). Targets at 150 ms:

- <= 3 round trips for agent list, device list and the monitor's first byte;
- <= 5 for a 1 MiB upload;
- an 8 MiB upload at 50 Mbit/s runs at >= 0.9x the link rate in its data
  phase (10% to 90% of its bytes delivered past the proxy).

Runs are interleaved (ours, then the baseline, ``--runs`` times); medians.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import trio
from harness import openssh, rig, stats
from harness.rig import MiB
from harness.stats import AT_LEAST, AT_MOST, Row, Target

sys.path.insert(0, str(rig.ROOT / "tests"))
from delayproxy import Conn, DelayProxy  # noqa: E402  (tests/: the same proxy the tests use)

from pio_remote.cli.device_cmds import ports_and_forwards
from pio_remote.client import upload as flash
from pio_remote.client.api import Client
from pio_remote.wire.serial_events import SerialSettings

AGENT = "wan-pi"
PORT = "wan-port"
PHASE_TIMEOUT_S = 120.0
ROUND_TRIP_TARGET = Target(AT_MOST, 3, "round trips")
UPLOAD_ROUND_TRIP_TARGET = Target(AT_MOST, 5, "round trips")
LINK_TARGET = 0.9  # of --rate, in the 8 MiB upload's data phase
AGENT_TOML = f"""\
max_upload_bytes = {64 * MiB}

[[uploader]]
ports = "{PORT}"
command = "true $SOURCE"
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench wan", description=__doc__.split("\n")[0])
    p.add_argument("--rtt", type=float, default=150.0, help="client-relay round trip, ms")
    p.add_argument("--agent-rtt", type=float, help="relay-agent round trip, ms (default: --rtt)")
    p.add_argument("--rate", type=float, default=50.0, help="each leg's Mbit/s (0: no cap)")
    p.add_argument("--runs", type=int, default=3, help="repetitions per figure (median)")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--keep-logs", action="store_true")
    return p.parse_args(argv)


class Measured:
    """Seconds, round trips and data rates per figure, over the runs."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {}
        self.trips: dict[str, list[int]] = {}
        self.rates: dict[str, list[float]] = {}

    def add(self, name: str, seconds: float, conn: Conn, rtt: float) -> None:
        self.seconds.setdefault(name, []).append(seconds)
        self.trips.setdefault(name, []).append(conn.round_trips(rtt))
        self.rates.setdefault(name, []).append(conn.data_rate())


def one_conn(proxy: DelayProxy) -> Conn:
    conns = proxy.snapshot()
    if len(conns) != 1:
        raise SystemExit(f"expected one connection through the proxy, saw {len(conns)}")
    return conns[0]


def timed(proxy: DelayProxy, out: Measured, name: str, rtt: float, run: Callable[[], None]) -> None:
    """Run one command through ``proxy``; wait for its trace to settle, then record it."""
    proxy.reset()
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    time.sleep(rtt)  # the close's last bytes reach the trace (not timed)
    out.add(name, elapsed, one_conn(proxy), rtt)


class Ours:
    """Each command as the CLI runs it, in-process, through the client proxy."""

    def __init__(self, url: str, token: str, home: Path, ref: str, board: str) -> None:
        self.url, self.token, self.home, self.ref, self.board = url, token, home, ref, board

    def client(self, *agents: str) -> AbstractAsyncContextManager[Client]:
        return Client.connect(self.url, self.token, home_path=self.home, agents=agents)

    async def agent_list(self) -> None:
        async with self.client() as client:
            await client.list_agents()

    async def device_list(self) -> None:
        async with self.client(self.ref) as client, client.session(self.ref) as agent:
            await ports_and_forwards(agent)

    async def monitor_first_byte(self) -> None:
        settings = SerialSettings(baudrate=115200).to_dict()
        async with self.client(self.ref) as client, client.session(self.ref) as agent:
            async with agent.open_call("monitor.open", port=self.board, settings=settings) as call:
                while not isinstance(await call.receive(), bytes):
                    pass

    async def upload(self, path: Path) -> None:
        async with (
            flash.Hashes([path]) as hashes,
            self.client(self.ref) as client,
            client.session(self.ref) as agent,
        ):
            files = await hashes.get([path])
            staged, result = await flash.deploy(agent, files, output=lambda _: None, port=PORT)
        if result.exit_code != 0 or staged.sent_files != 1:
            raise SystemExit(f"upload failed: {result}, {staged}")

    def run(self, fn: Callable[..., Awaitable[None]], *args: object) -> Callable[[], None]:
        def go() -> None:
            async def bounded() -> None:
                with trio.fail_after(PHASE_TIMEOUT_S):
                    await fn(*args)

            trio.run(bounded)

        return go


def firmware(tmp: Path, size: int) -> Path:
    path = tmp / f"fw-{os.urandom(4).hex()}.bin"
    path.write_bytes(os.urandom(size))
    return path


def measure(args: argparse.Namespace, tmp: Path) -> tuple[Measured, Measured, str]:
    rtt, agent_rtt = args.rtt / 1000, (args.agent_rtt if args.agent_rtt is not None else args.rtt)
    rate = args.rate * 1e6
    ours_m, theirs_m = Measured(), Measured()
    board = tmp / "board0"
    ptydev = rig.ROOT / "tests" / "e2e" / "ptydev.py"
    with rig.world(keep=args.keep_logs) as w, openssh.sshd() as server:
        if server is None:
            raise SystemExit("the OpenSSH baseline is needed: apt-get install openssh-server")
        relay_port = int(w.url.rsplit(":", 1)[1])
        pty = w.spawn("board", [rig.PY, str(ptydev), "banner", str(board)], rig.child_env())
        pty.wait_for("ptydev banner")
        (w.home / "agent.toml").write_text(AGENT_TOML)
        with (
            DelayProxy(relay_port, agent_rtt / 1000, rate) as agent_leg,
            DelayProxy(relay_port, rtt, rate) as client_leg,
            DelayProxy(server.port, rtt, rate) as ssh_leg,
        ):
            env = w.client_env()
            env["PIO_REMOTE_RELAY"] = f"ws://127.0.0.1:{agent_leg.port}"
            argv = [rig.PY, "-m", "pio_remote", "agent", "start", "-n", AGENT]
            argv += ["--log-level", "warning", "--port-glob", str(board)]
            w.spawn("agent", argv, env).wait_for(r"agent \S+ online")
            ref = f"bench/{AGENT}"
            ours = Ours(f"ws://127.0.0.1:{client_leg.port}", w.token, w.home, ref, str(board))
            ssh = [*server.cmd()[:2], str(ssh_leg.port), *server.cmd()[3:]]
            ssh_opts = server.cmd()[3:-1]

            def scp(path: Path) -> Callable[[], None]:
                dest = f"{rig.LOCALHOST}:{tmp}/dest-{path.name}"
                cmd = ["scp", "-q", "-O", "-P", str(ssh_leg.port), *ssh_opts, str(path), dest]
                return lambda: subprocess.run(cmd, check=True, timeout=PHASE_TIMEOUT_S)

            def ssh_true() -> None:
                subprocess.run([*ssh, "true"], check=True, timeout=PHASE_TIMEOUT_S)

            ours.run(ours.agent_list)()  # warm-up: imports, the agent's first session
            print(f"relay {w.url}; rtt {args.rtt:g} ms client, {agent_rtt:g} ms agent; "
                  f"{args.rate:g} Mbit/s; {args.runs} runs", flush=True)  # fmt: skip
            for n in range(args.runs):
                print(f"  run {n + 1}/{args.runs}", flush=True)
                timed(client_leg, ours_m, "agent list", rtt, ours.run(ours.agent_list))
                timed(client_leg, ours_m, "device list", rtt, ours.run(ours.device_list))
                timed(client_leg, ours_m, "monitor", rtt, ours.run(ours.monitor_first_byte))
                timed(ssh_leg, theirs_m, "ssh true", rtt, ssh_true)
                for mib in (1, 8):
                    path = firmware(tmp, mib * MiB)
                    timed(client_leg, ours_m, f"upload {mib}", rtt, ours.run(ours.upload, path))
                    timed(ssh_leg, theirs_m, f"upload {mib}", rtt, scp(path))
                    path.unlink()
    return ours_m, theirs_m, server.cipher


def rows_of(ours: Measured, theirs: Measured, rate_mbit: float) -> list[Row]:
    med = stats.median
    rows = []
    ssh_s = med(theirs.seconds["ssh true"]) * 1000
    for name, label in (
        ("agent list", "agent list"),
        ("device list", "device list -a"),
        ("monitor", "monitor, first byte"),
    ):
        rows.append(Row(f"{label}: time", med(ours.seconds[name]) * 1000, "ms", ssh_s))
    for mib in (1, 8):
        name = f"upload {mib}"
        rows.append(
            Row(
                f"upload {mib} MiB: time",
                med(ours.seconds[name]) * 1000,
                "ms",
                med(theirs.seconds[name]) * 1000,
            )
        )
    ssh_trips = med([float(x) for x in theirs.trips["ssh true"]])
    for name, label in (
        ("agent list", "agent list"),
        ("device list", "device list -a"),
        ("monitor", "monitor, first byte"),
        ("upload 1", "upload 1 MiB"),
    ):
        target = UPLOAD_ROUND_TRIP_TARGET if name == "upload 1" else ROUND_TRIP_TARGET
        trips = med([float(x) for x in ours.trips[name]])
        base = med([float(x) for x in theirs.trips[name]]) if name == "upload 1" else ssh_trips
        rows.append(Row(f"{label}: round trips", trips, "", base, target, digits=0))
    if rate_mbit:
        rate = med(ours.rates["upload 8"]) / 1e6
        target = Target(AT_LEAST, LINK_TARGET * rate_mbit, "Mbit/s")
        scp_rate = med(theirs.rates["upload 8"]) / 1e6
        rows.append(Row("upload 8 MiB: data phase", rate, "Mbit/s", scp_rate, target))
    return rows


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    machine = stats.machine_line()
    print(f"wan benchmark: {machine}")
    with tempfile.TemporaryDirectory(prefix="pio-bench-wan-") as tmp_name:
        ours, theirs, cipher = measure(args, Path(tmp_name))
    rows = rows_of(ours, theirs, args.rate)
    name = f"OpenSSH (cipher {cipher})"
    ok = stats.print_table(
        f"wan: pio-remote vs {name} through the same delay proxy (rtt {args.rtt:g} ms; "
        "baseline: 'ssh host true' for the commands, scp for uploads)",
        name,
        rows,
    )
    for label, measured in (("ours", ours), ("OpenSSH", theirs)):
        print(f"  round trips per run, {label}: {measured.trips}")
    print(f"  ({stats.load_line()})")
    if args.json:
        stats.write_json(args.json, "wan", machine, rows, {"baseline": name, "rtt": args.rtt})
    return 1 if args.check and not ok else 0
