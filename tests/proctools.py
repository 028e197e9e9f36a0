"""Helpers for driving pio-remote processes from tests and benchmarks.

Kept in the package (like ``trio.testing``) so that the test suite and
``scripts/bench`` share one way of waiting for a child process to say it is ready.
"""

from __future__ import annotations

import os
import re
import select
import time
from typing import IO


class LineWatcher:
    """The lines a child prints on a pipe, read as they come and kept for later."""

    def __init__(self, stream: IO[bytes]):
        self._fd = stream.fileno()
        self._buf = b""
        self.lines: list[str] = []

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match[str] | None:
        """The first line, already seen (from line ``start`` on) or yet to come, matching
        ``pattern``; None at the deadline or when the pipe closes."""
        regex = re.compile(pattern)
        for line in self.lines[start:]:
            if m := regex.search(line):
                return m
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self._fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(self._fd, 65536)
            if not chunk:
                return None
            self._buf += chunk
            while b"\n" in self._buf:
                raw, self._buf = self._buf.split(b"\n", 1)
                line = raw.decode(errors="replace")
                self.lines.append(line)
                if m := regex.search(line):
                    return m
        return None
