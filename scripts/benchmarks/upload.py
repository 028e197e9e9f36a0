"""`scripts/bench upload`: sending firmware to an agent, against scp to localhost.

What is timed for ours is what `pio-remote run -t upload --firmware FILE` does
after Python has started: connect to the relay (hashing the file meanwhile),
open an end-to-end session with the agent, ask it to flash (it answers which
blobs it lacks), stream the file (the agent checks its SHA-256 and renames
it into the cache), then flash again: the uploader is ``true``, so the flash
itself costs nothing.
The baseline is ``scp FILE 127.0.0.1:DIR`` to a private sshd, which includes
its own connection set-up, as a user's scp would. Targets:

- first upload, 1 MiB and 16 MiB: <= 1.0x scp's time;
- the same 16 MiB again (from the agent's cache): <= 0.15x our first upload,
  and at most 1% of the firmware's bytes on the wire (client to relay: the
  WebSocket upgrade, HELLO, the Noise handshake and the flash call). For 1 MiB
  the time ratio is printed for information: a connection, a handshake and a
  round trip cost more than a seventh of sending 1 MiB. Every upload hashes
  the file afresh (a file just written may keep its size and mtime).

Bytes on the wire are counted in a separate pass, through a counting TCP
forwarder between the client and the relay, so the timed runs go direct.

Without sshd the baseline is a raw TCP copy through one forwarder instead.
Fresh random firmware for every first upload, so the cache never helps them.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from time import perf_counter

import trio
from harness import cpumeter, openssh, rawtcp, rig, stats
from harness.rig import MiB
from harness.stats import AT_MOST, Row, Target

from pio_remote.client import upload as flash
from pio_remote.client.api import Client

AGENT_NAME = "bench-upload"
PORT = "bench-port"
SIZES_MIB = (1, 16)
FIRST_TARGET = Target(AT_MOST, 1.0)
CACHED_TARGET = Target(AT_MOST, 0.15)
WIRE_TARGET = Target(AT_MOST, 0.01)
PHASE_TIMEOUT_S = 120.0
AGENT_TOML = f"""\
max_upload_bytes = {64 * MiB}

[[uploader]]
ports = "{PORT}"
command = "true $SOURCE"
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench upload", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="repetitions per figure (median)")
    p.add_argument("--baseline", choices=["auto", "ssh", "tcp"], default="auto")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--keep-logs", action="store_true")
    return p.parse_args(argv)


def make_firmware(directory: Path, size: int) -> Path:
    path = directory / f"fw-{os.urandom(4).hex()}.bin"
    path.write_bytes(os.urandom(size))
    return path


class CountingForwarder:
    """A TCP hop in front of the relay that counts what the client sends through it."""

    def __init__(self, relay_url: str):
        host, port = relay_url.removeprefix("ws://").split("/")[0].rsplit(":", 1)
        self.backend = (host, int(port))
        self.listener = socket.create_server((rig.LOCALHOST, 0))
        self.url = f"ws://{rig.LOCALHOST}:{self.listener.getsockname()[1]}"
        self.sent = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            back = socket.create_connection(self.backend)
            threading.Thread(target=self._pipe, args=(conn, back, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(back, conn, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while chunk := src.recv(rawtcp.TCP_BLOCK):
                if count:
                    with self.lock:
                        self.sent += len(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def take(self) -> int:
        with self.lock:
            sent, self.sent = self.sent, 0
        return sent

    def close(self) -> None:
        self.listener.close()


async def upload_once(
    w: rig.World, path: Path, url: str | None = None
) -> tuple[float, flash.StageResult]:
    """What `run -t upload --firmware` does after Python has started, timed as a whole:
    connect to the relay (hashing meanwhile), handshake with the agent, stage, flash."""
    start = perf_counter()
    async with (
        flash.Hashes([path]) as hashes,
        Client.connect(url or w.url, w.token, home_path=w.home) as client,
        client.session(AGENT_NAME) as agent,
    ):
        files = await hashes.get([path])
        staged, result = await flash.deploy(agent, files, output=lambda _: None, port=PORT)
    elapsed = perf_counter() - start
    if result.exit_code != 0:
        raise SystemExit(f"uploader failed with {result.exit_code}")
    return elapsed, staged


async def measure_ours(
    w: rig.World, tmp: Path, runs: int, pids: dict[str, int]
) -> dict[str, list[float]]:
    """Wall-clock seconds per upload, and CPU seconds (relay + agent + client) per upload."""
    times: dict[str, list[float]] = {}
    await upload_once(w, make_firmware(tmp, 4096))  # warm up both ends
    for mib in SIZES_MIB:
        for key in ("first", "cached", "cpu first", "cpu cached"):
            times[f"{key} {mib}"] = []
        for _ in range(runs):
            path = make_firmware(tmp, mib * MiB)
            with trio.fail_after(PHASE_TIMEOUT_S):
                for key in ("first", "cached"):
                    with cpumeter.CpuMeter(pids) as meter:
                        t, staged = await upload_once(w, path)
                    expected = mib * MiB if key == "first" else 0
                    assert staged.sent_bytes == expected, staged
                    times[f"{key} {mib}"].append(t)
                    times[f"cpu {key} {mib}"].append(sum(meter.used.values()))
            path.unlink()
    return times


async def measure_wire(w: rig.World, tmp: Path) -> dict[int, tuple[int, int]]:
    """Bytes the client sends for a first and a repeat upload, by size in MiB."""
    counter = CountingForwarder(w.url)
    out = {}
    try:
        for mib in SIZES_MIB:
            path = make_firmware(tmp, mib * MiB)
            with trio.fail_after(PHASE_TIMEOUT_S):
                counter.take()
                await upload_once(w, path, counter.url)
                first = counter.take()
                _, staged = await upload_once(w, path, counter.url)
                assert staged.sent_bytes == 0, staged
                out[mib] = (first, counter.take())
            path.unlink()
    finally:
        counter.close()
    return out


def measure_baseline(copy: Callable[[Path], None], tmp: Path, runs: int) -> dict[int, list[float]]:
    """Seconds per copy, by size in MiB; size 0 is a 4 KiB file (the connection's cost)."""
    copy(make_firmware(tmp, 4096))
    out: dict[int, list[float]] = {0: []}
    for _ in range(runs):
        path = make_firmware(tmp, 4096)
        start = perf_counter()
        copy(path)
        out[0].append(perf_counter() - start)
    for mib in SIZES_MIB:
        times = []
        for _ in range(runs):
            path = make_firmware(tmp, mib * MiB)
            start = perf_counter()
            copy(path)
            times.append(perf_counter() - start)
            path.unlink()
        out[mib] = times
    return out


@contextmanager
def baseline(kind: str, dest: Path) -> Iterator[tuple[str, Callable[[Path], None]]]:
    if kind in ("auto", "ssh"):
        with openssh.sshd() as server:
            if server is not None:
                ssh_opts = server.cmd()[3:-1]  # -i KEY and the -o options, without host
                # -O: the classic scp protocol (remote `scp -t`); this sshd has no sftp.

                def scp(path: Path) -> None:
                    subprocess.run(
                        [
                            "scp",
                            "-q",
                            "-O",
                            "-P",
                            str(server.port),
                            *ssh_opts,
                            str(path),
                            f"{rig.LOCALHOST}:{dest}/",
                        ],
                        check=True,
                        timeout=PHASE_TIMEOUT_S,
                    )

                yield f"scp (cipher {server.cipher})", scp
                return
            if kind == "ssh":
                raise SystemExit("--baseline ssh: sshd is not usable here")
    print("(scp unavailable: the baseline is a raw TCP copy through one forwarder)")
    with rawtcp.tcp_baseline() as tcp:

        def tcp_copy(path: Path) -> None:
            with tcp.connect(rawtcp.TCP_SINK) as sock:
                with open(path, "rb") as fh:
                    sock.sendfile(fh)
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(8)

        yield "raw TCP", tcp_copy


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    machine = stats.machine_line()
    print(f"upload benchmark: {machine}")
    with tempfile.TemporaryDirectory(prefix="pio-bench-upload-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "src").mkdir()
        (tmp / "dest").mkdir()
        with (
            rig.world(keep=args.keep_logs) as w,
            baseline(args.baseline, tmp / "dest") as (
                name,
                copy,
            ),
        ):
            (w.home / "agent.toml").write_text(AGENT_TOML)
            agent = w.start_agent(AGENT_NAME)
            print(f"relay {w.url}; baseline {name}; {args.runs} runs per figure", flush=True)
            pids = {"relay": w.relay.pid, "agent": agent.pid, "client": os.getpid()}
            ours = trio.run(measure_ours, w, tmp / "src", args.runs, pids)
            wire = trio.run(measure_wire, w, tmp / "src")
            theirs = measure_baseline(copy, tmp / "src", args.runs)
    rows = []
    for mib in SIZES_MIB:
        first = stats.median(ours[f"first {mib}"])
        rows.append(
            Row(
                f"first upload, {mib} MiB",
                first * 1000,
                "ms",
                stats.median(theirs[mib]) * 1000,
                FIRST_TARGET,
            )
        )
    for mib in SIZES_MIB:
        rows.append(
            Row(
                f"same {mib} MiB again (cached)",
                stats.median(ours[f"cached {mib}"]) * 1000,
                "ms",
                stats.median(ours[f"first {mib}"]) * 1000,
                CACHED_TARGET if mib == max(SIZES_MIB) else None,
            )
        )
    for mib in SIZES_MIB:  # a mean: CPU times come in 10 ms ticks, a median would round
        rows.append(
            Row(
                f"same {mib} MiB again: CPU time",
                statistics.fmean(ours[f"cpu cached {mib}"]) * 1000,
                "ms",
                statistics.fmean(ours[f"cpu first {mib}"]) * 1000,
            )
        )
    for mib in SIZES_MIB:
        first_bytes, cached_bytes = wire[mib]
        rows.append(
            Row(
                f"same {mib} MiB again: bytes sent",
                cached_bytes / 1024,
                "KiB",
                mib * MiB / 1024,
                WIRE_TARGET,
                digits=2,
            )
        )
    ok = stats.print_table(
        f"upload: pio-remote vs {name} (baseline column: {name}; for 'cached' and "
        "'CPU time' rows: our first upload (CPU: relay + agent + client, not the "
        "uploader); for 'bytes sent': the firmware's size)",
        name,
        rows,
    )
    for mib in SIZES_MIB:
        first_bytes, cached_bytes = wire[mib]
        print(
            f"  client->relay bytes, {mib} MiB: first upload {first_bytes:,} "
            f"({first_bytes / (mib * MiB):.4f}x the firmware), repeat {cached_bytes:,} "
            f"({cached_bytes / (mib * MiB):.4f}x)"
        )
    big = max(SIZES_MIB)
    ours_bytes = stats.median(ours[f"first {big}"]) - stats.median(ours[f"cached {big}"])
    theirs_bytes = stats.median(theirs[big]) - stats.median(theirs[0])
    info = Row(f"{big} MiB, bytes only", ours_bytes * 1000, "ms", theirs_bytes * 1000)
    stats.print_table(
        f"for information, without connection set-up (ours: first - cached; "
        f"{name}: {big} MiB - 4 KiB)",
        name,
        [info],
    )
    print(f"  {name} of 4 KiB (connection and login): {stats.median(theirs[0]) * 1000:.0f} ms")
    for mib in SIZES_MIB:
        rate = mib / stats.median(ours[f"first {mib}"])
        print(f"  ours, first {mib} MiB: {rate:.0f} MiB/s end to end")
    rows.append(info)
    if args.json:
        stats.write_json(args.json, "upload", machine, rows, {"baseline": name})
    return 1 if args.check and not ok else 0
