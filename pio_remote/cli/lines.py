"""Output several agents or boards print at once, kept apart by a prefix on each line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol


class _Out(Protocol):
    def write(self, data: bytes) -> object: ...
    def flush(self) -> None: ...


class PrefixedLines:
    """Bytes as they come; with a prefix, whole lines, each saying whose it is.

    Without a prefix (one agent) the bytes pass at once, so a progress bar's
    ``\\r`` updates still show; ``whole_lines`` cuts them into lines anyway.
    ``sink`` takes each finished line instead of stdout (above a live view).
    """

    def __init__(
        self, prefix: str, sink: Callable[[str], None] | None = None, *, whole_lines: bool = False
    ):
        self.prefix = prefix.encode()
        self.out: _Out = sys.stdout.buffer if sink is None else _LineSink(sink)
        self.whole_lines = whole_lines or bool(prefix)
        self.pending = bytearray()

    def __call__(self, data: bytes) -> None:
        if not self.whole_lines:
            self.out.write(data)
        else:
            self.pending += data
            *lines, rest = self.pending.split(b"\n")
            for line in lines:
                self.out.write(self.prefix + line.rstrip(b"\r") + b"\n")
            self.pending[:] = rest
        self.out.flush()

    def close(self) -> None:
        """End a last line that had no newline."""
        if self.pending:
            self(b"\n")


class _LineSink:
    """Looks enough like stdout's buffer to ``PrefixedLines``: each line goes to ``sink``."""

    def __init__(self, sink: Callable[[str], None]):
        self.sink = sink

    def write(self, data: bytes) -> None:
        self.sink(data.decode(errors="replace").rstrip("\n"))

    def flush(self) -> None:
        pass
