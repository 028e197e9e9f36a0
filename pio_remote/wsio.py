"""The trio shell around websockets' sans-IO protocol, shared by the relay and the endpoints.

``websockets.server.ServerProtocol`` and ``websockets.client.ClientProtocol`` own
RFC 6455: the opening handshake, framing, masking (in C), size limits checked
from the frame header, pings and the closing handshake. They never touch a
socket. This module owns the socket, the same way for the relay, the agents and
the clients:

- one read asks for RECEIVE_BYTES, so one pass through the scheduler turns into
  several frames;
- a write goes straight to the socket while it has room, and only waits (as
  one shielded, bounded write) when it is full, so a frame is never cut in half;
- ``Assembler`` joins fragmented messages, the one job the sans-IO layer leaves
  to its caller.

Why not trio-websocket: its reader task hands every message over a memory
channel (one more scheduler pass per message), every send takes a lock and a
system call, and its wsproto masking was only fast through a patch of a private
class. See the library table in README.md for the figures.

Nothing here imports crypto, Noise or pyserial: the relay uses it too.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable

import trio
from websockets.frames import Frame, Opcode

# Bytes asked of the socket per read: several full 64 KiB frames per system call.
# Only allocated while data arrives, never held by an idle connection.
RECEIVE_BYTES = 256 * 1024

OP_CONT, OP_TEXT, OP_BINARY = Opcode.CONT, Opcode.TEXT, Opcode.BINARY
OP_CLOSE, OP_PING, OP_PONG = Opcode.CLOSE, Opcode.PING, Opcode.PONG

Message = tuple[int, bytes]

# The logger handed to every protocol object. websockets logs each connection at
# INFO and, when its logger is enabled for DEBUG, every frame: far too much for
# a relay with thousands of connections, or an agent run with --log-level debug.
# Its warnings and errors still come through.
PROTOCOL_LOG = logging.getLogger("pio_remote.wsio.protocol")
PROTOCOL_LOG.setLevel(logging.WARNING)


class Assembler:
    """Turns the protocol's frames into whole messages: (opcode, payload).

    Data messages come out whole (fragments joined); control frames come out as
    they arrive (they may interleave with fragments). The protocol object has
    already checked the order of fragments and the total size against its
    ``max_size``, so this only joins.
    """

    __slots__ = ("_parts", "_opcode")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._opcode = 0

    def take(self, frames: Iterable[Frame]) -> list[Message]:
        out: list[Message] = []
        for frame in frames:
            opcode = frame.opcode
            if opcode >= OP_CLOSE:
                out.append((opcode, bytes(frame.data)))
            elif frame.fin and not self._opcode:
                out.append((opcode, bytes(frame.data)))  # the usual case: one frame
            else:
                if opcode != OP_CONT:
                    self._opcode = opcode
                self._parts.append(bytes(frame.data))
                if frame.fin:
                    out.append((self._opcode, b"".join(self._parts)))
                    self._parts, self._opcode = [], 0
        return out


class FastSocketStream(trio.abc.Stream):
    """Plain TCP with one pass through the scheduler per read, and none per write.

    trio's SocketStream yields after every successful send and receive, which on
    the forwarding path is one more trip through the scheduler per frame: a
    third of the relay's CPU per forwarded frame at 64-byte messages. Here a
    read waits for readability, then reads; a write goes straight to the socket
    and only waits while the socket is full. ``try_send`` lets one task write to
    an idle peer without waking that peer's writer task.
    """

    def __init__(self, tcp: trio.SocketStream) -> None:
        self._tcp = tcp
        # Take the file descriptor over rather than dup() it: a relay with 10,000
        # agents must not need 20,000 descriptors. The emptied trio socket is
        # still closed in aclose(), which then costs nothing.
        self._sock = socket.socket(fileno=tcp.socket.detach())
        self._sock.setblocking(False)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(self._sock)
            try:
                return self._sock.recv(max_bytes or 65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc

    def try_send(self, data: bytes | memoryview) -> int:
        """Bytes the socket takes now, without waiting (maybe 0)."""
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(data)
        while view:
            sent = self.try_send(view)
            if not sent:
                await trio.lowlevel.wait_writable(self._sock)
            view = view[sent:]

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._sock)

    def send_eof(self) -> None:
        """Half-close: the peer reads EOF once it has what was sent."""
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    async def aclose(self) -> None:
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
        await self._tcp.aclose()


def joined(writes: list[bytes]) -> bytes:
    """What ``data_to_send()`` returned, as one write (its EOF marker is b"", a no-op)."""
    if len(writes) == 1:
        return writes[0]
    return b"".join(writes)
