"""The farm benchmark's floor: the same uploaders and boards, driven directly.

For every board at once (a thread each): run the uploader command that the
agent's [[uploader]] runs, then open the board's test port (which resets the
board, as the agent's open does) and read until the Unity summary and its
OK/FAIL line. No relay, agent, client, session or encryption: what is left is
what the boards and their uploaders cost, the floor pio-remote's farm run is
measured against (`scripts/bench farm`).
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import termios
import threading
import tty
from pathlib import Path
from time import monotonic, perf_counter

from harness import rig

# The end of a Unity report: "N Tests N Failures N Ignored", then "OK" or "FAIL".
SUMMARY = re.compile(rb"\d+ Tests \d+ Failures \d+ Ignored\s*\r?\n(OK|FAIL)")
READ_TIMEOUT_S = 60.0


def uploader_argv(port: str, firmware: Path) -> list[str]:
    """What the benchmark's agent.toml [[uploader]] runs for ``port``."""
    return [rig.PY, "-m", "pio_remote.vboard", "upload", port, str(firmware)]


def read_report(port: str, timeout: float = READ_TIMEOUT_S) -> bytes:
    """Open the test port (the board resets) and read to the end of its Unity report."""
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd, termios.TCSANOW)
        seen = bytearray()
        deadline = monotonic() + timeout
        while not SUMMARY.search(seen):
            left = deadline - monotonic()
            if left <= 0:
                raise TimeoutError(f"{port}: no Unity summary within {timeout:g} s")
            if select.select([fd], [], [], left)[0]:
                try:
                    seen += os.read(fd, 65536)
                except BlockingIOError:
                    continue
        return bytes(seen)
    finally:
        os.close(fd)


def direct_run(ports: list[str], firmware: Path) -> float:
    """Flash and test every board at once, without pio-remote; returns seconds."""
    errors: list[str] = []

    def one(port: str) -> None:
        try:
            # As the agent runs an uploader: its own session (process group), its
            # output read through a pipe. The session matters here: with the kernel's
            # scheduler autogroups (sched_autogroup_enabled), each session shares the
            # CPU as one group, and 16 uploaders in the caller's session ran 3x slower
            # on a loaded 2-core machine than 16 in sessions of their own.
            code = subprocess.run(
                uploader_argv(port, firmware),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            ).returncode
            if code != 0:
                raise RuntimeError(f"{port}: the uploader exited {code}")
            read_report(port)
        except (OSError, RuntimeError) as exc:
            errors.append(str(exc))

    start = perf_counter()
    threads = [threading.Thread(target=one, args=(p,)) for p in ports]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = perf_counter() - start
    if errors:
        raise SystemExit(f"floor run failed: {'; '.join(errors)}")
    return elapsed
