"""The front door: read one request head into the protocol object, then answer or upgrade.

One port serves plain HTTP (``/healthz``, ``/metrics``) and the WebSocket
upgrades, and one parser sees every request: the connection's
``ServerProtocol``. The relay bounds the head in size and time, then answers
through the same object (``reject``/``accept`` and ``send_response``). Bytes
a client sent behind its head (pipelined frames) are replayed to the
connection by ``ReplayStream``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress

import trio
from websockets.exceptions import InvalidMessage
from websockets.http11 import Request, Response

from pio_remote.relay.websocket import ServerSocket

# Largest request head accepted. Our clients send ~300 bytes; 8 KiB matches
# the common server default (Apache's LimitRequestFieldSize, nginx's
# large_client_header_buffers) and bounds what a half-open peer can pin.
MAX_HEAD_BYTES = 8 * 1024

# Default time for a peer to send its request head, TLS handshake included
# (relay serve --head-timeout). Slow-loris bound: an honest client sends the
# head in its first packet.
HEAD_TIMEOUT_S = 10.0

_END_OF_HEAD = b"\r\n\r\n"


class Refusal(Exception):
    """The request cannot be served; ``status`` is the HTTP answer (None: just close)."""

    def __init__(
        self,
        status: int | None,
        message: str,
        headers: tuple[tuple[str, str], ...] = (),
        wire: bytes = b"",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers
        self.wire = wire  # an answer the protocol already wrote, to send as it is


async def read_request(
    stream: trio.abc.ReceiveStream, ws: ServerSocket, timeout: float = HEAD_TIMEOUT_S
) -> tuple[Request, bytes]:
    """The request head, parsed by ``ws``'s protocol, and the bytes read after it.

    At most MAX_HEAD_BYTES within ``timeout``; Refusal says what was wrong.
    """
    raw = bytearray()
    with trio.move_on_after(timeout):
        while True:
            end = raw.find(_END_OF_HEAD)
            if end >= 0:
                break
            if len(raw) >= MAX_HEAD_BYTES:
                raise Refusal(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
            data = await stream.receive_some(MAX_HEAD_BYTES + 1 - len(raw))
            if not data:
                raise Refusal(None, "connection closed before the request head")
            raw += data
            if not raw[:1].isalpha():
                # Not HTTP (a TLS ClientHello, for one): say so now, not at the deadline.
                raise Refusal(400, "not an HTTP request (TLS to a plain relay? use ws://)")
        proto = ws.proto
        head_end = end + len(_END_OF_HEAD)
        if head_end > MAX_HEAD_BYTES:
            raise Refusal(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
        proto.receive_data(bytes(raw[:head_end]))
        events = proto.events_received()
        if events and isinstance(events[0], Request):
            return events[0], bytes(raw[head_end:])
        # The protocol refused the head: it wrote its own answer (too many
        # headers: 431), or only its end-of-stream marker (not HTTP: 400 below).
        wire = b"".join(proto.data_to_send())
        exc = proto.handshake_exc
        cause = exc.__cause__ if isinstance(exc, InvalidMessage) else exc
        raise Refusal(400, f"bad HTTP request: {cause or exc}", wire=wire)
    raise Refusal(408, f"no complete request head within {timeout:g} s")


def response(
    ws: ServerSocket,
    status: int,
    text: str,
    *,
    content_type: str = "",
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """The wire bytes of a complete answer (not an upgrade); the relay closes after it."""
    answer: Response = ws.proto.reject(status, text)
    answer.headers["Cache-Control"] = "no-store"
    if content_type:
        del answer.headers["Content-Type"]
        answer.headers["Content-Type"] = content_type
    for name, value in headers:
        answer.headers[name] = value
    if ws.proto.eof_sent:
        return answer.serialize()  # the protocol gave up on the head: answer anyway
    ws.proto.send_response(answer)
    return b"".join(ws.proto.data_to_send())


# Envelope frames a peer put in its upgrade request (HELLO, and a client's OPEN and
# Noise message 1): base64url, separated by spaces. Reverse proxies pass headers on, while
# some drop bytes sent behind the request before the 101; so the first frames travel here,
# and the 101 says how many the relay took (a relay without this takes none, and the peer
# sends them as frames).
EARLY_HEADER = "X-Pio-Early"
MAX_EARLY_FRAMES = 16


def early_frames(request: Request) -> list[bytes] | None:
    """The frames of the request's EARLY_HEADER; None without one (or with a bad one)."""
    values = request.headers.get_all(EARLY_HEADER)
    if len(values) != 1:
        return None
    parts = values[0].split()
    if not 0 < len(parts) <= MAX_EARLY_FRAMES:
        return None
    try:
        return [base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)) for part in parts]
    except (ValueError, binascii.Error):
        return None


def upgrade(
    ws: ServerSocket, request: Request, early: list[bytes] | None = None
) -> tuple[bytes, bool]:
    """The answer to an upgrade request, and whether it is the 101 (else a refusal)."""
    answer = ws.proto.accept(request)
    if answer.status_code != 101:
        answer.headers["Cache-Control"] = "no-store"
    elif early:
        answer.headers[EARLY_HEADER] = str(len(early))
    ws.proto.send_response(answer)
    return b"".join(ws.proto.data_to_send()), answer.status_code == 101


def real_ip(request: Request) -> str | None:
    """The client address a trusted reverse proxy put in ``X-Real-IP`` (None: none,
    several, or not an IP address). Only asked for connections from such a proxy."""
    values = request.headers.get_all("X-Real-IP")
    if len(values) != 1:
        return None
    try:
        return str(ipaddress.ip_address(values[0].strip()))
    except ValueError:
        return None


def bearer_token(request: Request) -> str:
    """The token from ``Authorization: Bearer <token>``; Refusal(401) says what is wrong."""
    challenge = (("WWW-Authenticate", 'Bearer realm="pio-remote"'),)
    values = request.headers.get_all("Authorization")
    if not values:
        raise Refusal(
            401,
            "missing Authorization header: send 'Authorization: Bearer <token>' "
            "(an admin creates one with 'pio-remote relay user add NAME')",
            challenge,
        )
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if len(values) > 1 or scheme.lower() != "bearer" or not token:
        raise Refusal(401, "bad token: expected 'Authorization: Bearer <token>'", challenge)
    return token


class ReplayStream(trio.abc.Stream):
    """A stream that first returns bytes already read from ``inner``, then reads on.

    Used when a client sent frames in the same packets as its upgrade request
    (our clients send HELLO that way). Over plain TCP it keeps the inner
    stream's ``try_send``, so forwarding to it still skips the writer task.
    """

    def __init__(self, inner: trio.abc.Stream, prefix: bytes) -> None:
        self._inner = inner
        self._prefix = prefix
        try_send = getattr(inner, "try_send", None)
        if try_send is not None:
            self.try_send = try_send

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._prefix:
            return await self._inner.receive_some(max_bytes)
        size = len(self._prefix) if max_bytes is None else max_bytes
        data, self._prefix = self._prefix[:size], self._prefix[size:]
        await trio.lowlevel.checkpoint()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._inner.aclose()
