"""The routing envelope: the only part of a frame the relay reads.

The relay routes opaque end-to-end encrypted bytes between clients and agents
by *channel*. Every WebSocket binary message carries exactly one frame:

    +--------+------------------+-------------------------+
    | type   | channel (u32 BE) | payload                 |
    | 1 byte | 4 bytes          | 0..MAX_PAYLOAD bytes    |
    +--------+------------------+-------------------------+

Protocol flow. A connection authenticates during the WebSocket upgrade
(``Authorization: Bearer <token>`` on ``/v1/agent`` or ``/v1/client``; a bad
token gets HTTP 401 and no WebSocket). Then:

1. the peer sends HELLO, the relay answers WELCOME (or ERROR and closes);
2. a client sends OPEN on a channel id it picks; the relay answers OPENED
   (or CLOSE with the reason) and sends OPEN to the agent on a channel id
   the relay picks for that agent connection;
3. both ends exchange DATA; the relay rewrites the channel id and nothing else;
4. either end sends CLOSE; the relay forwards it and forgets the channel.
   When an agent goes away the relay sends CLOSE for each of its channels.

Frame types are listed in ``FrameType`` below, one line each with its
direction, channel and payload layout.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 1

HEADER = struct.Struct(">BI")
HEADER_SIZE = HEADER.size  # 5

# One Noise transport message is at most 65535 bytes (Noise spec, section 3);
# a frame carries one of them plus the header, and nothing larger is legal.
MAX_PAYLOAD = 65535
MAX_FRAME_SIZE = HEADER_SIZE + MAX_PAYLOAD

# Channel 0 is the connection itself (HELLO, WELCOME, PING, ERROR).
CONTROL_CHANNEL = 0
MAX_CHANNEL = 2**32 - 1


class FrameType(enum.IntEnum):
    HELLO = 0x01  # peer -> relay, ch 0: JSON {"version", "role", "name"?, "shares"?, "key"?}
    WELCOME = 0x02  # relay -> peer, ch 0: JSON {"version", "account", "max_frame"}
    OPEN = 0x03  # client -> relay: ch=client's id, utf-8 agent ref "name" or "owner/name"
    #              relay -> agent: ch=relay's id, utf-8 client account name
    OPENED = 0x04  # relay -> client: JSON {"agent": "owner/name", "key": hex}
    DATA = 0x05  # both ways: opaque bytes (end-to-end encrypted)
    CLOSE = 0x06  # both ways: utf-8 reason, may be empty
    LIST = 0x07  # client -> relay: ch=request id, empty; relay -> client: JSON list of agents
    PING = 0x08  # both ways, ch 0: opaque payload, answered by PONG with the same payload
    PONG = 0x09  # both ways, ch 0: the PING payload
    ERROR = 0x0A  # relay -> peer, ch 0: JSON {"code", "message"}; the relay closes after it


# Types whose payload is JSON; the rest are bytes or utf-8 text.
JSON_TYPES = frozenset({FrameType.HELLO, FrameType.WELCOME, FrameType.OPENED, FrameType.ERROR})


class EnvelopeError(ValueError):
    """A frame that breaks the envelope rules; the sender is at fault."""


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    channel: int
    payload: bytes = b""

    def json(self) -> Any:
        """Decode a JSON payload, raising EnvelopeError on garbage."""
        try:
            return json.loads(self.payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EnvelopeError(f"{self.type.name} frame payload is not JSON: {exc}") from None

    def text(self) -> str:
        try:
            return self.payload.decode("utf-8")
        except UnicodeDecodeError:
            raise EnvelopeError(f"{self.type.name} frame payload is not UTF-8") from None


def encode(ftype: FrameType, channel: int, payload: bytes = b"") -> bytes:
    if not 0 <= channel <= MAX_CHANNEL:
        raise EnvelopeError(f"channel {channel} out of range")
    if len(payload) > MAX_PAYLOAD:
        raise EnvelopeError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(ftype, channel) + payload


def encode_json(ftype: FrameType, channel: int, obj: Any) -> bytes:
    return encode(ftype, channel, json.dumps(obj, separators=(",", ":")).encode())


def decode(frame: bytes | bytearray | memoryview) -> Frame:
    """Parse one frame; the size check comes before anything else is read."""
    size = len(frame)
    if size > MAX_FRAME_SIZE:
        raise EnvelopeError(f"frame of {size} bytes exceeds the maximum of {MAX_FRAME_SIZE}")
    if size < HEADER_SIZE:
        raise EnvelopeError(f"frame of {size} bytes is shorter than the {HEADER_SIZE}-byte header")
    raw_type, channel = HEADER.unpack_from(frame)
    try:
        ftype = FrameType(raw_type)
    except ValueError:
        raise EnvelopeError(f"unknown frame type 0x{raw_type:02x}") from None
    return Frame(ftype, channel, bytes(frame[HEADER_SIZE:]))


def rechannel(frame: bytes, channel: int) -> bytes:
    """The same frame on another channel id: all the relay does to DATA."""
    # One copy: join reads the payload straight from the view.
    return b"".join((frame[:1], channel.to_bytes(4, "big"), memoryview(frame)[HEADER_SIZE:]))
