"""Wait, with a deadline, for a child process to print a line (or bytes) on a pipe.

A background thread drains the pipe as data comes, so a child never blocks on
a full pipe while nobody is waiting, and every wait is on an event (the
thread's notification), not on polling. The quickstart, the board farm, and
the tests' and benchmarks' process helpers (tests/proctools.py) all use it.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import IO, AnyStr


class LineWatcher:
    """Everything a child prints on one pipe: ``data`` (raw) and ``lines`` (decoded)."""

    def __init__(self, stream: IO[AnyStr]):
        self.data = bytearray()
        self.lines: list[str] = []
        self.closed = False
        self._partial = bytearray()  # the line being printed: no newline yet
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[AnyStr]) -> None:
        # The thread owns the pipe: only it reads and closes it, so the descriptor
        # can never be closed under a read and reused for another file.
        fd = stream.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            with self._cond:
                if not chunk:
                    if self._partial:
                        self.lines.append(self._partial.decode(errors="replace"))
                    self.closed = True
                    self._cond.notify_all()
                    break
                self.data += chunk
                self._add_lines(chunk)
                self._cond.notify_all()
        stream.close()

    def _add_lines(self, chunk: bytes) -> None:
        if b"\n" not in chunk:
            self._partial += chunk  # amortised: a long line is not copied per chunk
            return
        first, *middle, rest = chunk.split(b"\n")
        self._partial += first
        for raw in (self._partial, *middle):
            self.lines.append(raw.decode(errors="replace"))
        self._partial = bytearray(rest)

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match[str] | None:
        """The first line, already seen (from line ``start`` on) or yet to come, matching
        ``pattern``; None at the deadline or when the pipe closes first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if m := regex.search(line):
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    return None
                self._cond.wait(left)

    def wait_for_bytes(self, pattern: bytes, timeout: float) -> re.Match[bytes] | None:
        """``pattern`` searched in everything printed so far, across lines."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (m := regex.search(self.data)):
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    return None
                self._cond.wait(left)
            return m

    def wait_closed(self, timeout: float) -> bool:
        """True once the child closed its end (usually: it exited) and all was read."""
        self._thread.join(timeout)
        return self.closed

    def text(self) -> str:
        with self._cond:
            return self.data.decode(errors="replace")
