"""One connection's send queue, bounded in bytes, drained by its writer task.

Senders never wait here on *another* connection's behalf: ``put`` always
queues, and the session sheds the channels of a queue that stays over its bound
(see ``limits.py``). Only frames that answer the connection itself (WELCOME,
PONG, OPENED, LIST) wait for room, with ``put_own``: a peer that does not read
its own answers then stops being read, and slows down no one else.
"""

from __future__ import annotations

from collections import deque

import trio

from pio_remote.wire import envelope
from pio_remote.wire.envelope import FrameType

_DATA = FrameType.DATA


class Gone(Exception):
    """The connection closed; nothing more will be sent on it."""


class Outbox:
    """Frames (envelope bytes, or wire-ready ``bytes`` subclasses) for one peer."""

    __slots__ = ("_items", "size", "bound", "over_since", "closed", "_writer", "_room")

    def __init__(self, bound: int) -> None:
        self._items: deque[bytes] = deque()
        self.size = 0  # bytes queued
        self.bound = bound
        # When the queue last went over its bound (None: it is within it).
        self.over_since: float | None = None
        self.closed = False
        self._writer = trio.lowlevel.ParkingLot()
        self._room = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def idle(self) -> bool:
        """Empty, and the writer is parked waiting for a frame."""
        return not self._items and len(self._writer) == 1

    def put(self, frame: bytes) -> bool:
        """Queue ``frame`` now, whatever the size; False if the connection is gone."""
        if self.closed:
            return False
        self._items.append(frame)
        self.size += len(frame)
        if self._writer:
            self._writer.unpark()
        return True

    async def put_own(self, frame: bytes) -> None:
        """Queue an answer to this connection's peer once there is room (backpressure)."""
        while self.size >= self.bound and not self.closed:
            await self._room.park()
        if not self.put(frame):
            raise Gone

    async def take(self, max_bytes: int) -> list[bytes]:
        """Wait for frames; take them in order, up to about ``max_bytes``."""
        while not self._items:
            if self.closed:
                raise Gone
            await self._writer.park()
        items = self._items
        batch = [items.popleft()]
        taken = len(batch[0])
        while items and taken < max_bytes:
            frame = items.popleft()
            batch.append(frame)
            taken += len(frame)
        self.size -= taken
        if self.size < self.bound:
            self.over_since = None
            if self._room:
                self._room.unpark_all()
        return batch

    def by_channel(self) -> dict[int, int]:
        """Queued DATA bytes per channel: where to look when the queue is too big."""
        queued: dict[int, int] = {}
        for frame in self._items:
            if type(frame) is bytes and len(frame) >= envelope.HEADER_SIZE and frame[0] == _DATA:
                channel = int.from_bytes(frame[1:5], "big")
                queued[channel] = queued.get(channel, 0) + len(frame)
        return queued

    def drop_channel(self, channel: int) -> int:
        """Forget the queued DATA frames of ``channel``; returns the bytes freed."""
        head = _DATA.to_bytes(1, "big") + channel.to_bytes(4, "big")
        kept: deque[bytes] = deque()
        freed = 0
        for frame in self._items:
            if type(frame) is bytes and frame[:5] == head:
                freed += len(frame)
            else:
                kept.append(frame)
        self._items = kept
        self.size -= freed
        if self.size < self.bound:
            self.over_since = None
            self._room.unpark_all()
        return freed

    def close(self) -> None:
        """No more frames: wake the writer and anyone waiting for room."""
        self.closed = True
        self._writer.unpark_all()
        self._room.unpark_all()
