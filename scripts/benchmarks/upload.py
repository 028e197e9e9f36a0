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
- the same 16 MiB again (from the agent's cache): <= 0.1x our first upload.
  For 1 MiB the same ratio is printed for information: a connection, a
  handshake and a round trip cost more than a tenth of sending 1 MiB.

Without sshd the baseline is a raw TCP copy through one forwarder instead.
Fresh random firmware for every first upload, so the cache never helps them.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from time import perf_counter

import harness
import trio
from harness import AT_MOST, MiB, Row, Target

from pio_remote import upload as flash
from pio_remote.client import Client

AGENT_NAME = "bench-upload"
PORT = "bench-port"
SIZES_MIB = (1, 16)
FIRST_TARGET = Target(AT_MOST, 1.0)
CACHED_TARGET = Target(AT_MOST, 0.1)
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


async def upload_once(w: harness.World, path: Path) -> tuple[float, flash.StageResult]:
    """What `run -t upload --firmware` does after Python has started, timed as a whole:
    connect to the relay (hashing meanwhile), handshake with the agent, stage, flash."""
    start = perf_counter()
    async with (
        flash.Hashes([path]) as hashes,
        Client.connect(w.url, w.token, home_path=w.home) as client,
        client.session(AGENT_NAME) as agent,
    ):
        files = await hashes.get([path])
        staged, result = await flash.deploy(agent, files, output=lambda _: None, port=PORT)
    elapsed = perf_counter() - start
    if result.exit_code != 0:
        raise SystemExit(f"uploader failed with {result.exit_code}")
    return elapsed, staged


async def measure_ours(w: harness.World, tmp: Path, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    await upload_once(w, make_firmware(tmp, 4096))  # warm up both ends
    for mib in SIZES_MIB:
        firsts, cached = [], []
        for _ in range(runs):
            path = make_firmware(tmp, mib * MiB)
            with trio.fail_after(PHASE_TIMEOUT_S):
                t, staged = await upload_once(w, path)
                assert staged.sent_bytes == mib * MiB, staged
                firsts.append(t)
                t, staged = await upload_once(w, path)
                assert staged.sent_bytes == 0 and staged.cached_files == 1, staged
                cached.append(t)
            path.unlink()
        times[f"first {mib}"] = firsts
        times[f"cached {mib}"] = cached
    return times


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
        with harness.sshd() as server:
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
                            f"{harness.LOCALHOST}:{dest}/",
                        ],
                        check=True,
                        timeout=PHASE_TIMEOUT_S,
                    )

                yield f"scp (cipher {server.cipher})", scp
                return
            if kind == "ssh":
                raise SystemExit("--baseline ssh: sshd is not usable here")
    print("(scp unavailable: the baseline is a raw TCP copy through one forwarder)")
    with harness.tcp_baseline() as tcp:

        def tcp_copy(path: Path) -> None:
            with tcp.connect(harness.TCP_SINK) as sock:
                with open(path, "rb") as fh:
                    sock.sendfile(fh)
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(8)

        yield "raw TCP", tcp_copy


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    machine = harness.machine_line()
    print(f"upload benchmark: {machine}")
    with tempfile.TemporaryDirectory(prefix="pio-bench-upload-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "src").mkdir()
        (tmp / "dest").mkdir()
        with (
            harness.world(keep=args.keep_logs) as w,
            baseline(args.baseline, tmp / "dest") as (
                name,
                copy,
            ),
        ):
            (w.home / "agent.toml").write_text(AGENT_TOML)
            w.start_agent(AGENT_NAME)
            print(f"relay {w.url}; baseline {name}; {args.runs} runs per figure", flush=True)
            ours = trio.run(measure_ours, w, tmp / "src", args.runs)
            theirs = measure_baseline(copy, tmp / "src", args.runs)
    rows = []
    for mib in SIZES_MIB:
        first = harness.median(ours[f"first {mib}"])
        rows.append(
            Row(
                f"first upload, {mib} MiB",
                first * 1000,
                "ms",
                harness.median(theirs[mib]) * 1000,
                FIRST_TARGET,
            )
        )
    for mib in SIZES_MIB:
        rows.append(
            Row(
                f"same {mib} MiB again (cached)",
                harness.median(ours[f"cached {mib}"]) * 1000,
                "ms",
                harness.median(ours[f"first {mib}"]) * 1000,
                CACHED_TARGET if mib == max(SIZES_MIB) else None,
            )
        )
    ok = harness.print_table(
        f"upload: pio-remote vs {name} (baseline column: {name}; for "
        "'cached' rows: our first upload)",
        name,
        rows,
    )
    big = max(SIZES_MIB)
    ours_bytes = harness.median(ours[f"first {big}"]) - harness.median(ours[f"cached {big}"])
    theirs_bytes = harness.median(theirs[big]) - harness.median(theirs[0])
    info = Row(f"{big} MiB, bytes only", ours_bytes * 1000, "ms", theirs_bytes * 1000)
    harness.print_table(
        f"for information, without connection set-up (ours: first - cached; "
        f"{name}: {big} MiB - 4 KiB)",
        name,
        [info],
    )
    print(f"  {name} of 4 KiB (connection and login): {harness.median(theirs[0]) * 1000:.0f} ms")
    for mib in SIZES_MIB:
        rate = mib / harness.median(ours[f"first {mib}"])
        print(f"  ours, first {mib} MiB: {rate:.0f} MiB/s end to end")
    rows.append(info)
    if args.json:
        harness.write_json(args.json, "upload", machine, rows, {"baseline": name})
    return 1 if args.check and not ok else 0
