"""Server side of RFC 6455, sans-IO: the upgrade answer and frame parsing.

Why not trio-websocket: its reader task hands every message to the
application through a memory channel, and each send takes a lock and a
system call; at 64 KiB frames those hops cost more CPU than the relaying
itself. This module does only what a relay needs: accept the upgrade (no
subprotocols, no extensions), parse masked client frames into messages, and
build unmasked server frames, so a connection's reader turns one socket read
into several frames without a task switch, and its writer sends a batch of
frames in one system call.

Limits are checked from the frame header, before any payload is buffered.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import struct
from collections.abc import Callable

# RFC 6455 section 1.3: appended to Sec-WebSocket-Key before hashing.
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_DATA_OPS = frozenset({OP_TEXT, OP_BINARY})
_CONTROL_OPS = frozenset({OP_CLOSE, OP_PING, OP_PONG})

# RFC 6455 section 5.5: control frames carry at most 125 bytes.
MAX_CONTROL_PAYLOAD = 125

# Close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006
CLOSE_TOO_BIG = 1009

# Close reasons must fit a control frame with the 2-byte code.
MAX_CLOSE_REASON = MAX_CONTROL_PAYLOAD - 2

_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


_ALL_BYTES = int.from_bytes(bytes(range(256)), "big")


@functools.cache
def _xor_table(k: int) -> bytes:
    """The translate table mapping every byte b to b ^ k."""
    return (_ALL_BYTES ^ int.from_bytes(bytes((k,)) * 256, "big")).to_bytes(256, "big")


def _unmask_portable(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """XOR ``data`` with the repeating 4-byte ``key``: one translate per key byte."""
    out = bytearray(data)
    for i in range(4):
        out[i::4] = out[i::4].translate(_xor_table(key[i]))
    return bytes(out)


def _find_unmask() -> Callable[[bytes | bytearray | memoryview, bytes], bytes]:
    """A C implementation if one is installed (about 80x faster), else the portable one."""
    try:
        from websockets.speedups import apply_mask
    except ImportError:
        return _unmask_portable
    return apply_mask


unmask = _find_unmask()


class ProtocolViolation(Exception):
    """The peer broke RFC 6455 or a size limit; close with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def accept_key(key: str) -> str:
    digest = hashlib.sha1(key.encode("latin-1") + _ACCEPT_GUID).digest()
    return base64.b64encode(digest).decode()


def check_upgrade(method: str, headers: dict[str, str]) -> tuple[int, str] | None:
    """(HTTP status, what is wrong) for an unacceptable upgrade request, else None."""
    connection = {part.strip().lower() for part in headers.get("connection", "").split(",")}
    if headers.get("upgrade", "").strip().lower() != "websocket" or "upgrade" not in connection:
        return 426, "expected a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)"
    if method != "GET":
        return 400, "a WebSocket upgrade must be a GET request"
    if headers.get("sec-websocket-version", "").strip() != "13":
        return 426, "unsupported Sec-WebSocket-Version: this relay speaks version 13"
    key = headers.get("sec-websocket-key", "").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except ValueError:
        return 400, "Sec-WebSocket-Key must be 16 bytes in base64"
    return None


def accept_response(headers: dict[str, str]) -> bytes:
    """The 101 answer to a request that passed check_upgrade()."""
    accept = accept_key(headers["sec-websocket-key"].strip())
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode()


def frame_header(opcode: int, size: int) -> bytes:
    """Header of an unmasked, final server frame carrying ``size`` payload bytes."""
    first = 0x80 | opcode
    if size < 126:
        return bytes((first, size))
    if size < 65536:
        return bytes((first, 126)) + _U16.pack(size)
    return bytes((first, 127)) + _U64.pack(size)


def binary_header(size: int) -> bytes:
    return frame_header(OP_BINARY, size)


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    return frame_header(opcode, len(payload)) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    data = reason.encode()[:MAX_CLOSE_REASON].decode(errors="ignore").encode()
    return control_frame(OP_CLOSE, _U16.pack(code) + data)


class FrameParser:
    """Turns the bytes a client sends into (opcode, payload) messages.

    Data messages come out whole (fragments joined) as (OP_BINARY | OP_TEXT,
    payload); control frames as (OP_PING | OP_PONG | OP_CLOSE, payload), see
    parse_close(). Text payloads are not decoded: the relay refuses text
    messages anyway.
    """

    __slots__ = ("max_message", "_buf", "_parts", "_size", "_opcode", "_skip")

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._size = 0
        self._opcode = 0  # opcode of the message being reassembled, 0 if none
        self._skip = 0  # payload bytes of a refused oversized frame still to come

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Parse what ``data`` completes; raise ProtocolViolation on bad input.

        After a too-big frame (1009) the parser skips that frame's payload and
        stays usable, so the peer's Close reply can still be read.
        """
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return []
            data, self._skip = data[self._skip :], 0
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data  # common case: parse straight from the received bytes
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(view)
        while end - pos >= 2:
            b0, b1 = view[pos], view[pos + 1]
            opcode = b0 & 0x0F
            if b0 & 0x70:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extensions)")
            if not b1 & 0x80:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
            size = b1 & 0x7F
            head = pos + 2
            if size == 126:
                if end - head < 2:
                    break
                size = (view[head] << 8) | view[head + 1]
                head += 2
            elif size == 127:
                if end - head < 8:
                    break
                size = _U64.unpack_from(view, head)[0]
                head += 8
            try:
                self._check(opcode, b0 & 0x80, size)
            except ProtocolViolation as exc:
                if exc.code == CLOSE_TOO_BIG:
                    self._skip_frame(view, head + 4 + size, end)
                raise
            start = head + 4
            stop = start + size
            if stop > end:
                break
            key = bytes(view[head:start])
            payload = unmask(memoryview(view)[start:stop], key) if size else b""
            pos = stop
            self._frame(opcode, b0 & 0x80, payload, out)
        if pos == end:
            buf.clear()
        elif view is buf:
            del buf[:pos]
        else:
            buf += memoryview(view)[pos:]
        return out

    def _skip_frame(self, view: bytes | bytearray, stop: int, end: int) -> None:
        """Forget the current message and drop input up to ``stop``."""
        rest = bytes(view[stop:]) if stop < end else b""
        self._skip = max(0, stop - end)
        self._buf.clear()
        self._buf += rest
        self._parts, self._size, self._opcode = [], 0, 0

    def _check(self, opcode: int, fin: int, size: int) -> None:
        """Header checks, before the payload is waited for or buffered."""
        if opcode in _CONTROL_OPS:
            if not fin:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
            if size > MAX_CONTROL_PAYLOAD:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "control frame over 125 bytes")
            return
        if opcode == OP_CONT:
            if not self._opcode:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "continuation without a message")
        elif opcode in _DATA_OPS:
            if self._opcode:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
        else:
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, f"unknown opcode 0x{opcode:x}")
        if self._size + size > self.max_message:
            raise ProtocolViolation(CLOSE_TOO_BIG, f"message larger than {self.max_message} bytes")

    def _frame(self, opcode: int, fin: int, payload: bytes, out: list[tuple[int, bytes]]) -> None:
        if opcode >= OP_CLOSE:  # control frames: never fragmented, may interleave
            out.append((opcode, payload))
        elif fin and not self._opcode:
            out.append((opcode, payload))  # the usual case: a whole message in one frame
        else:
            if opcode != OP_CONT:
                self._opcode = opcode
            self._parts.append(payload)
            self._size += len(payload)
            if fin:
                out.append((self._opcode, b"".join(self._parts)))
                self._parts = []
                self._size = 0
                self._opcode = 0


def sendable_close_code(code: int) -> bool:
    """Codes an endpoint may put in a Close frame (1005, 1006 and 1015 only describe)."""
    return 1000 <= code < 5000 and code not in (CLOSE_NO_STATUS, CLOSE_ABNORMAL, 1015)


def parse_close(payload: bytes) -> tuple[int, str]:
    """(code, reason) of a Close frame's payload."""
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) < 2:
        raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = _U16.unpack_from(payload)[0]
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise ProtocolViolation(1007, "close reason is not UTF-8") from None
    return code, reason
