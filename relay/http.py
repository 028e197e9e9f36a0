"""The front door: read one HTTP request head, then answer it or upgrade.

One port serves plain HTTP (``/healthz``, ``/metrics``) and the WebSocket
upgrades. The relay reads the request head itself (bounded in size and time),
answers plain requests and refusals directly, and after an upgrade hands the
connection a ``ReplayStream`` holding any bytes read past the head.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import h11
import trio

# Largest request head accepted. Our clients send ~300 bytes; 8 KiB matches
# the common server default (Apache's LimitRequestFieldSize, nginx's
# large_client_header_buffers) and bounds what a half-open peer can pin.
MAX_HEAD_BYTES = 8 * 1024

# Time for a peer (after TLS) to send its request head. Slow-loris bound: an
# honest client sends the head in its first packet.
HEAD_TIMEOUT_S = 10.0

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class HeadError(Exception):
    """The request head could not be read; ``status`` is the answer, if any."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Head:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    rest: bytes  # bytes read after the head (a client may pipeline its first frames)


async def read_head(stream: trio.abc.ReceiveStream) -> Head:
    """Read and parse one request head, at most MAX_HEAD_BYTES within HEAD_TIMEOUT_S."""
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    raw = bytearray()
    with trio.move_on_after(HEAD_TIMEOUT_S):
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                raise HeadError(400, f"bad HTTP request: {exc}") from None
            if isinstance(event, h11.Request):
                return _head(event, parser.trailing_data[0])
            if event is not h11.NEED_DATA:
                raise HeadError(400, "bad HTTP request")
            room = MAX_HEAD_BYTES - len(raw)
            if room <= 0:
                raise HeadError(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
            data = await stream.receive_some(room)
            if not data:
                raise HeadError(None, "connection closed before the request head")
            raw += data
            parser.receive_data(data)
    raise HeadError(408, f"no complete request head within {HEAD_TIMEOUT_S:g} s")


def _head(event: h11.Request, rest: bytes) -> Head:
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    target = event.target.decode("latin-1")
    return Head(event.method.decode("latin-1"), target.split("?", 1)[0], headers, rest)


def response(
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    extra: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A complete HTTP/1.1 response; the relay closes the connection after it."""
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "Cache-Control: no-store",
        *(f"{name}: {value}" for name, value in extra),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def bearer_token(headers: dict[str, str]) -> str:
    """The token from ``Authorization: Bearer <token>``; HeadError(401) says what is wrong."""
    value = headers.get("authorization")
    if value is None:
        raise HeadError(
            401,
            "missing Authorization header: send 'Authorization: Bearer <token>' "
            "(an admin creates one with 'pio-remote relay user add NAME')",
        )
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise HeadError(401, "bad token: expected 'Authorization: Bearer <token>'")
    return token


class ReplayStream(trio.abc.Stream):
    """A stream that first returns bytes already read from ``inner``, then reads on.

    Only used when a client sent frames in the same packets as its upgrade
    request, so the extra call per read costs nothing in the common case.
    """

    def __init__(self, inner: trio.abc.Stream, prefix: bytes) -> None:
        self._inner = inner
        self._prefix = prefix

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


class FastSocketStream(trio.abc.Stream):
    """Plain TCP with one pass through the scheduler per read, and none per write.

    trio's SocketStream yields after every successful send and receive, which on
    the forwarding path is one more trip through the scheduler per frame: a
    third of the relay's CPU per forwarded frame at 64-byte messages. Here a
    read waits for readability, then reads; a write goes straight to the socket
    and only waits while the socket is full. ``try_send`` lets the reader write
    to an idle peer without waking that peer's writer task.
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

    async def aclose(self) -> None:
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
        await self._tcp.aclose()
