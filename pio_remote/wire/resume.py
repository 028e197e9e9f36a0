"""A monitor that outlives its session: the agent's output ring and the resume check.

When the session carrying a monitor is lost, the agent keeps the port open for a
grace period and keeps what the board prints in an ``OutputRing``. Every byte
the port produced has an absolute offset (0 is the first byte after the open),
so a client that comes back says "I have everything before offset N" and the
ring answers with the bytes from N on, or with how many are gone:

    ring = OutputRing(capacity=1 << 20)
    ring.append(b"...")                 # the port's reader
    gap, data = ring.read_from(n, limit)  # gap > 0: that many bytes were overwritten

The ring keeps the newest ``capacity`` bytes, sent or not: bytes the agent had
sent when the path broke may never have arrived. Pure code: no I/O, no clock.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any


class OutputRing:
    """The newest ``capacity`` bytes of a stream, addressed by absolute offset."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("ring capacity must be positive")
        self.capacity = capacity
        self._buf = bytearray()
        self.start = 0  # offset of _buf[0]; everything before it was overwritten

    @property
    def end(self) -> int:
        """Offset of the next byte the port will produce (all bytes so far)."""
        return self.start + len(self._buf)

    def __len__(self) -> int:
        return len(self._buf)

    def append(self, data: bytes) -> int:
        """Keep ``data``; returns how many old bytes were overwritten to make room."""
        self._buf += data
        return self.shrink(self.capacity)

    def shrink(self, size: int) -> int:
        """Keep only the newest ``size`` bytes (the memory budget took the rest back)."""
        drop = max(0, len(self._buf) - max(0, size))
        if drop:
            del self._buf[:drop]
            self.start += drop
        return drop

    def read_from(self, offset: int, limit: int) -> tuple[int, bytes]:
        """Up to ``limit`` bytes from ``offset``: (bytes missing before them, the bytes).

        An offset past the end reads nothing (the caller waits for more); one
        before ``start`` reports the overwritten bytes as missing and reads from ``start``.
        """
        if offset < 0:
            raise ValueError("offset must not be negative")
        gap = max(0, self.start - offset)
        first = max(offset, self.start) - self.start
        return gap, bytes(self._buf[first : first + max(0, limit)])


@dataclass(frozen=True)
class ResumeRequest:
    """What a client presents to take a kept monitor back."""

    token: str
    offset: int

    def to_dict(self) -> dict[str, Any]:
        return {"token": self.token, "offset": self.offset}

    @classmethod
    def from_dict(cls, raw: Any) -> ResumeRequest:
        if not isinstance(raw, dict):
            raise ValueError("resume must be an object with 'token' and 'offset'")
        token, offset = raw.get("token"), raw.get("offset")
        if not isinstance(token, str) or not 16 <= len(token) <= 128:
            raise ValueError("resume token must be a string of 16 to 128 characters")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError("resume offset must be a non-negative integer")
        return cls(token, offset)


@dataclass(frozen=True)
class Refused:
    """The resume is not allowed: the message says why, for the agent's log and the client."""

    message: str


@dataclass(frozen=True)
class Resumed:
    """Replay from ``offset``; ``missing`` bytes before it were overwritten while away."""

    offset: int
    missing: int


def check_resume(
    owner_key: bytes,
    token: str,
    presented_key: bytes,
    request: ResumeRequest,
    ring: OutputRing,
) -> Resumed | Refused:
    """May this session take the kept monitor back, and from where?

    The token names the monitor; the key proves who may use it: the session's
    Noise handshake proved ``presented_key``, so a token copied to another
    client key is refused, as is an offset the agent never produced.
    """
    if not hmac.compare_digest(token.encode(), request.token.encode()):
        return Refused("the resume token does not match")
    if not hmac.compare_digest(owner_key, presented_key):
        return Refused("the monitor belongs to another client key")
    if request.offset > ring.end:
        return Refused(f"offset {request.offset} is past the {ring.end} bytes the port produced")
    gap, _ = ring.read_from(request.offset, 0)
    return Resumed(max(request.offset, ring.start), gap)
