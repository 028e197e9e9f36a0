"""A relay connection's WebSocket: websockets' ``ServerProtocol`` and the little the relay adds.

The protocol object owns RFC 6455: it parses the upgrade request, answers it
(``accept``/``reject``/``send_response``), parses and unmasks frames (in C),
checks each frame's size from its header before buffering the payload, answers
pings, and runs the closing handshake. It never touches the socket: the
relay's trio shell (``session.py``, on the stream from ``pio_remote.net.wsio``)
reads and writes, and whoever calls ``data_to_send()`` writes what it returns
before anything else, so frames stay whole and in order.

What is ours: whole messages out of frames (``wsio.Assembler``), framing errors
as ``ProtocolViolation`` with the close code the protocol sent, and the
relay's goodbye, an ERROR frame before the Close even when the protocol
failed the connection itself (oversized or malformed frames).
"""

from __future__ import annotations

from websockets.exceptions import InvalidState
from websockets.frames import CloseCode, Frame
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from pio_remote.net.wsio import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    PROTOCOL_LOG,
    Assembler,
    Message,
    joined,
)

__all__ = ["OP_BINARY", "OP_CLOSE", "OP_PING", "OP_TEXT", "ProtocolViolation", "ServerSocket"]

# Close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = CloseCode.NORMAL_CLOSURE  # 1000
CLOSE_PROTOCOL_ERROR = CloseCode.PROTOCOL_ERROR  # 1002
CLOSE_ABNORMAL = CloseCode.ABNORMAL_CLOSURE  # 1006: described, never sent
CLOSE_TOO_BIG = CloseCode.MESSAGE_TOO_BIG  # 1009

# RFC 6455 section 5.5: a Close frame's payload is at most 125 bytes, 2 of them the code.
MAX_CLOSE_REASON = 123


class ProtocolViolation(Exception):
    """The peer broke RFC 6455 or the size limit; the protocol closed with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _cut(reason: str) -> str:
    """``reason`` cut to fit a Close frame, still valid UTF-8."""
    return reason.encode()[:MAX_CLOSE_REASON].decode(errors="ignore")


class ServerSocket:
    """One connection's protocol object, plus message assembly."""

    __slots__ = ("proto", "_assembler")

    def __init__(self, max_message: int) -> None:
        self.proto = ServerProtocol(max_size=max_message, logger=PROTOCOL_LOG)
        self._assembler = Assembler()

    def feed(self, data: bytes) -> list[Message]:
        """Messages and control frames ``data`` completes; ProtocolViolation on bad input.

        After a violation the protocol has queued its Close (see ``goodbye``) and
        discards whatever else the peer sends.
        """
        proto = self.proto
        proto.receive_data(data)
        out = self._assembler.take(proto.events_received())  # type: ignore[arg-type]
        if proto.parser_exc is not None:
            sent = proto.close_sent
            code = sent.code if sent is not None else CLOSE_PROTOCOL_ERROR
            raise ProtocolViolation(code, str(proto.parser_exc))
        return out

    def frames(self, payloads: list[bytes]) -> bytes:
        """Wire bytes of one binary frame per payload, after anything the protocol queued."""
        proto = self.proto
        if proto.state is OPEN:
            for payload in payloads:
                proto.send_binary(payload)
        return joined(proto.data_to_send())

    def frame(self, payload: bytes) -> bytes:
        proto = self.proto
        if proto.state is OPEN:
            proto.send_binary(payload)
        return joined(proto.data_to_send())

    def pending(self) -> bytes:
        """What the protocol queued by itself: a pong, the echo of the peer's Close."""
        return joined(self.proto.data_to_send())

    def goodbye(self, error: bytes | None, code: int, reason: str) -> bytes:
        """The last bytes to send: ``error`` (an ERROR envelope frame) if any, then Close."""
        proto = self.proto
        if proto.state is OPEN:
            if error is not None:
                proto.send_binary(error)
            try:
                proto.send_close(code, _cut(reason))
            except InvalidState:
                pass
            return joined(proto.data_to_send())
        pending = proto.data_to_send()  # a pong, the protocol's own Close, its EOF marker
        if error is not None and proto.parser_exc is not None:
            # The protocol failed the connection: the ERROR goes right before its Close.
            at = next((i for i, data in enumerate(pending) if data[:1] == b"\x88"), None)
            if at is not None:
                pending.insert(at, Frame(OP_BINARY, error).serialize(mask=False))
        return joined(pending)

    @property
    def close_code(self) -> int:
        """The peer's close code (1005 for a Close without one)."""
        rcvd = self.proto.close_rcvd
        return rcvd.code if rcvd is not None else CLOSE_ABNORMAL
