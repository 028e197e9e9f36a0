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
  to its caller;
- ``ClientWebSocket`` is the endpoints' side (``wsclient.connect`` opens one):
  the link's reader gets every message one socket read completes in one
  scheduler pass, and a send frames the message and writes it at once.

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
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidState
from websockets.frames import CloseCode, Frame, Opcode

# Bytes asked of the socket per read: several full 64 KiB frames per system call.
# Only allocated while data arrives, never held by an idle connection.
RECEIVE_BYTES = 256 * 1024

OP_CONT, OP_TEXT, OP_BINARY = Opcode.CONT, Opcode.TEXT, Opcode.BINARY
OP_CLOSE, OP_PING, OP_PONG = Opcode.CLOSE, Opcode.PING, Opcode.PONG

Message = tuple[int, bytes]

# A write that the relay does not take for this long means the link is lost.
SEND_STALL_TIMEOUT = 30.0
# Bytes framed but not yet written, beyond which senders wait for the socket.
SEND_BUFFER_BYTES = 256 * 1024
# The closing handshake on our way out.
CLOSE_TIMEOUT = 2.0

# The logger handed to every protocol object. websockets logs each connection at
# INFO and, when its logger is enabled for DEBUG, every frame: far too much for
# a relay with thousands of connections, or an agent run with --log-level debug.
# Its warnings and errors still come through.
PROTOCOL_LOG = logging.getLogger("pio_remote.net.wsio.protocol")
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

    def finish(self) -> None:
        """Half-close, then discard what has already arrived (without waiting for more).

        Closing a socket with unread data sends a reset, which may throw away
        what we wrote last; an empty receive buffer closes with a plain FIN.
        """
        self.send_eof()
        try:
            while self._sock.recv(RECEIVE_BYTES):
                pass
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


class Closed(Exception):
    """The WebSocket is closed; ``code`` is the peer's close code (1006: no Close seen)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"code {code}" + (f" ({reason})" if reason else ""))
        self.code = code
        self.reason = reason


class ClientWebSocket:
    """An open WebSocket to the relay: messages in, messages out, one socket."""

    def __init__(self, stream: trio.abc.Stream, proto: ClientProtocol, early: list[bytes]) -> None:
        self.stream = stream
        self.proto = proto
        self._assembler = Assembler()
        self._early = early  # messages that arrived with the 101 answer
        self._out: list[bytes] = []
        self._out_size = 0
        self._writing = False
        self._lot = trio.lowlevel.ParkingLot()
        self.stalled = False

    # ---- receiving ---------------------------------------------------------------

    async def receive(self) -> list[bytes]:
        """The binary messages the next socket read completes (at least one).

        Raises Closed when the relay closes or the connection breaks; answers
        pings and the relay's Close on the way.
        """
        if self._early:
            early, self._early = self._early, []
            return early
        proto = self.proto
        while True:
            try:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise Closed(CloseCode.ABNORMAL_CLOSURE, f"connection lost: {exc}") from None
            if data:
                proto.receive_data(data)
            else:
                proto.receive_eof()
            messages = []
            for opcode, payload in self._assembler.take(proto.events_received()):
                if opcode == OP_BINARY:
                    messages.append(payload)
                elif opcode < OP_BINARY:  # text
                    raise Closed(CloseCode.UNSUPPORTED_DATA, "relay sent a text message")
            if proto.writes:  # a pong, or our answer to the relay's Close
                try:
                    await self.flush()
                except Closed:
                    pass
            if messages:
                return messages
            if not data or proto.close_rcvd is not None or proto.parser_exc is not None:
                raise self._closed()

    def unread(self, messages: list[bytes]) -> None:
        """Put back messages taken with an earlier one; the next receive() returns them."""
        self._early = messages + self._early

    def _closed(self) -> Closed:
        proto = self.proto
        if proto.close_rcvd is not None:
            return Closed(proto.close_rcvd.code, proto.close_rcvd.reason)
        if proto.parser_exc is not None:
            return Closed(CloseCode.PROTOCOL_ERROR, f"bad data from the relay: {proto.parser_exc}")
        return Closed(CloseCode.ABNORMAL_CLOSURE, "connection lost")

    # ---- sending -----------------------------------------------------------------

    async def send(self, message: bytes) -> None:
        """Frame ``message`` and write it, whole, in order with every other send.

        The frame is complete in the outgoing buffer before anything waits, so a
        cancelled sender never leaves half a frame behind.
        """
        try:
            self.proto.send_binary(message)
        except InvalidState:
            raise self._closed() from None
        await self.flush()

    async def flush(self) -> None:
        """Write what the protocol has framed; one task writes, the others wait for room."""
        for data in self.proto.data_to_send():
            self._out.append(data)
            self._out_size += len(data)
        if self._writing:
            while self._writing and self._out_size > SEND_BUFFER_BYTES:
                await self._lot.park()
            if self.stalled:
                raise Closed(CloseCode.ABNORMAL_CLOSURE, "connection lost")
            return
        self._writing = True
        try:
            # Shielded: a write cut in half would corrupt the stream. Bounded
            # instead, per batch (this task also writes what others queue
            # meanwhile): a relay that takes a batch in no less than
            # SEND_STALL_TIMEOUT is lost anyway.
            with trio.CancelScope(shield=True) as scope:
                while self._out:
                    scope.deadline = trio.current_time() + SEND_STALL_TIMEOUT
                    data = joined(self._out)
                    self._out, self._out_size = [], 0
                    self._lot.unpark_all()
                    await self.stream.send_all(data)
            if scope.cancelled_caught:
                self.stalled = True
                raise Closed(
                    CloseCode.ABNORMAL_CLOSURE,
                    f"relay accepted nothing for {SEND_STALL_TIMEOUT:g} s",
                )
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.stalled = True
            raise Closed(CloseCode.ABNORMAL_CLOSURE, f"connection lost: {exc}") from None
        finally:
            self._writing = False
            self._lot.unpark_all()

    async def aclose(self) -> None:
        """Send our Close and FIN, then drop the socket without waiting for the answer.

        Waiting for the relay's Close cost a whole round trip at the end of every
        command. The relay treats our Close as final either way: it echoes it and
        ends the connection. What has already arrived is read first, so the close
        does not turn into a reset that could discard our own last frames.
        """
        try:
            with trio.move_on_after(CLOSE_TIMEOUT):
                if self.proto.close_rcvd is None and not self.stalled:
                    try:
                        self.proto.send_close(CloseCode.NORMAL_CLOSURE)
                    except InvalidState:
                        pass
                    await self.flush()
                    if isinstance(self.stream, FastSocketStream):
                        self.stream.finish()
        except Closed:
            pass
        finally:
            await trio.aclose_forcefully(self.stream)
