"""The endpoint side of a WebSocket to the relay: connect with a deadline per phase, then talk.

Connecting has three phases, TCP, TLS (for ``wss://``) and the upgrade, and
each has its own deadline (CONNECT_TIMEOUT), so a server that accepts and
never answers costs at most that long. Each way it can fail becomes a
``ConnectError`` whose one-line message names the cause and the fix: a bad
URL, an unknown host, a refused port, an untrusted certificate, TLS to a
plain relay or plain to a TLS one, a server that is not a relay, a refused
token. A server's HTML is never shown, only its status line.

The connection is then a ``wsio.ClientWebSocket``: websockets'
``ClientProtocol`` under the shared trio shell.
"""

from __future__ import annotations

import base64
import errno
import socket
import ssl

import trio
from websockets.client import ClientProtocol
from websockets.exceptions import (
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.http11 import Response
from websockets.uri import WebSocketURI, parse_uri

from pio_remote.net.wsio import (
    OP_BINARY,
    PROTOCOL_LOG,
    RECEIVE_BYTES,
    Assembler,
    ClientWebSocket,
    Closed,
    FastSocketStream,
    joined,
)

# Deadline of each connect phase (TCP, TLS, upgrade). A relay on the far side of
# the world answers each in well under a second.
CONNECT_TIMEOUT = 10.0
# The "is it TLS?" probe after a plain upgrade got no answer: a loopback or LAN relay
# answers in milliseconds, and a path that is down should not hold the error long.
PROBE_TIMEOUT = 2.0
# Longest part of a refusal's body that is quoted (only plain-text bodies are).
MAX_QUOTED_BODY = 300

URL_FORM = "ws://HOST:PORT or wss://HOST[:PORT]"

# The request header that carries the first messages (relay/http.py reads it), and
# the most of it we send: the relay takes request heads of up to 8 KiB, and proxies
# about as much; what does not fit goes as messages after the upgrade.
EARLY_HEADER = "X-Pio-Early"
MAX_EARLY_HEADER = 4096


class ConnectError(Exception):
    """Connecting failed. ``kind``: bad_url, dns, refused, network, lost, timeout, tls,
    not_relay, auth, rejected; ``status`` is the HTTP status of a refusal."""

    def __init__(self, message: str, kind: str, status: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


def parse_url(url: str, path: str = "") -> WebSocketURI:
    """The relay URL (plus ``path``) as websockets reads it; ConnectError shows the form."""
    try:
        uri = parse_uri(url + path)
    except InvalidURI:
        hint = ""
        if url.startswith(("http://", "https://")):
            hint = f" (use ws{url[4:].split(':', 1)[0]}://... instead of {url.split(':')[0]}://)"
        raise ConnectError(
            f"relay URL {url!r} is not valid: expected {URL_FORM}{hint}", "bad_url"
        ) from None
    return uri


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()


def _refusal(url: str, response: Response) -> ConnectError:
    """A non-101 answer: quote a short plain-text reason, never an HTML page."""
    status = response.status_code
    kind = "auth" if status in (401, 403) else "rejected"
    head = f"HTTP {status} {_printable(response.reason_phrase)}".strip()
    ctype = response.headers.get("Content-Type", "")
    body = response.body.decode("utf-8", "replace") if response.body else ""
    lines = [line for line in body.splitlines() if line.strip()]
    if ctype.startswith("text/plain") and lines and len(body) <= MAX_QUOTED_BODY:
        reason = _printable(lines[0])
        return ConnectError(f"relay {url} refused the connection ({head}): {reason}", kind, status)
    if kind == "auth":
        return ConnectError(f"relay {url} refused the token ({head})", kind, status)
    return ConnectError(
        f"{url} is not a pio-remote relay: it answered the WebSocket upgrade with {head} "
        "(check the host, the port and the path of the relay URL)",
        "not_relay",
        status,
    )


def _looks_like_tls(data: bytes) -> bool:
    """A TLS record (alert 0x15 or handshake 0x16, version 3.x) where HTTP was expected."""
    return len(data) >= 2 and data[0] in (0x15, 0x16) and data[1] == 0x03


# ---- connecting ------------------------------------------------------------------------


async def connect(
    url: str,
    path: str,
    headers: list[tuple[str, str]],
    max_size: int,
    ssl_context: ssl.SSLContext | None = None,
    pipelined: list[bytes] | None = None,
) -> ClientWebSocket:
    """Open a WebSocket to ``url`` + ``path``; ConnectError says why it could not.

    ``pipelined`` messages travel in the upgrade request itself (relay/http.py's
    EARLY_HEADER), so the first messages cost no round trip of their own; a relay
    that does not take them there gets them as messages once it has answered.
    Not as bytes behind the request: some reverse proxies (Caddy) drop what
    arrives before the upgrade's answer, while every proxy passes a header on.
    """
    base = url.rstrip("/")
    uri = parse_url(base, path)
    where = f"{uri.host}:{uri.port}"
    tcp = await _tcp(base, uri, where)
    stream: trio.abc.Stream = tcp
    try:
        if uri.secure:
            stream = await _tls(base, uri, tcp, ssl_context)
        else:
            stream = FastSocketStream(tcp)
        return await _upgrade(base, uri, stream, headers, max_size, pipelined or [])
    except ConnectError as exc:
        await trio.aclose_forcefully(stream)
        if exc.kind == "lost" and not uri.secure and await _speaks_tls(uri):
            raise ConnectError(
                f"relay {base} closed the connection at the WebSocket upgrade and speaks "
                "TLS: use wss:// instead of ws://",
                "tls",
            ) from None
        raise
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def _speaks_tls(uri: WebSocketURI) -> bool:
    """Does the server take a TLS handshake? Tells a TLS relay asked in plain text (it
    closes without a word) from a path that dropped mid-upgrade (it takes nothing)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only "is it TLS?": nothing is sent over it
    with trio.move_on_after(PROBE_TIMEOUT):
        try:
            tcp = await trio.open_tcp_stream(uri.host, uri.port)
        except OSError:
            return False
        stream = trio.SSLStream(tcp, context, server_hostname=uri.host)
        try:
            await stream.do_handshake()
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        finally:
            await trio.aclose_forcefully(stream)
    return False


async def _tcp(url: str, uri: WebSocketURI, where: str) -> trio.SocketStream:
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            return await trio.open_tcp_stream(uri.host, uri.port)
    except trio.TooSlowError:
        raise ConnectError(
            f"cannot reach relay {url}: no TCP connection to {where} within "
            f"{CONNECT_TIMEOUT:g} s (is the host up, or a firewall dropping packets?)",
            "timeout",
        ) from None
    except socket.gaierror as exc:
        raise ConnectError(
            f"cannot reach relay {url}: unknown host {uri.host!r} ({exc.strerror}); "
            "check the relay URL",
            "dns",
        ) from None
    except OSError as exc:
        # trio tries each address and puts the individual errors in the cause.
        causes = [exc, *getattr(exc.__cause__, "exceptions", ())]
        if any(getattr(c, "errno", None) == errno.ECONNREFUSED for c in causes):
            raise ConnectError(
                f"cannot reach relay {url}: connection refused by {where} "
                "(is the relay running, and on this port?)",
                "refused",
            ) from None
        detail = next((c.strerror for c in causes if getattr(c, "strerror", None)), str(exc))
        raise ConnectError(f"cannot reach relay {url}: {detail}", "network") from None


async def _tls(
    url: str, uri: WebSocketURI, tcp: trio.SocketStream, context: ssl.SSLContext | None
) -> trio.SSLStream[trio.SocketStream]:
    # The default context trusts the system's CAs, or the bundle in SSL_CERT_FILE.
    stream = trio.SSLStream(tcp, context or ssl.create_default_context(), server_hostname=uri.host)
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            await stream.do_handshake()
    except trio.TooSlowError:
        raise ConnectError(
            f"TLS handshake with relay {url} did not finish within {CONNECT_TIMEOUT:g} s "
            "(if the relay serves plain WebSocket, use ws:// instead of wss://)",
            "timeout",
        ) from None
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise ConnectError(
                f"TLS handshake with relay {url} failed: its certificate is not trusted "
                f"({cause.verify_message}); for a private CA, point SSL_CERT_FILE at the "
                "CA's certificate (PEM)",
                "tls",
            ) from None
        reason = getattr(cause, "reason", None) or str(cause or exc) or "connection closed"
        raise ConnectError(
            f"TLS handshake with relay {url} failed ({reason}): if the relay serves plain "
            "WebSocket, use ws:// instead of wss://",
            "tls",
        ) from None
    return stream


async def _upgrade(
    url: str,
    uri: WebSocketURI,
    stream: trio.abc.Stream,
    headers: list[tuple[str, str]],
    max_size: int,
    pipelined: list[bytes],
) -> ClientWebSocket:
    proto = ClientProtocol(uri, max_size=max_size, logger=PROTOCOL_LOG)
    request = proto.connect()
    for name, value in headers:
        request.headers[name] = value
    early = " ".join(base64.urlsafe_b64encode(m).rstrip(b"=").decode() for m in pipelined)
    if early and len(early) <= MAX_EARLY_HEADER:
        request.headers[EARLY_HEADER] = early
    else:
        early = ""
    proto.send_request(request)
    first = b""
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            await stream.send_all(joined(proto.data_to_send()))
            while True:
                data = await stream.receive_some(RECEIVE_BYTES)
                first = first or data[:256]
                if data:
                    proto.receive_data(data)
                else:
                    proto.receive_eof()
                events = proto.events_received()
                if proto.handshake_exc is not None:
                    raise _handshake_failed(url, proto.handshake_exc, first)
                if events:
                    break
                if not data:
                    raise _handshake_failed(url, None, first)
    except trio.TooSlowError:
        raise ConnectError(
            f"{url} accepted the connection but did not answer the WebSocket upgrade within "
            f"{CONNECT_TIMEOUT:g} s: is it a pio-remote relay"
            + ("?" if uri.secure else " (or does it expect TLS: wss://)?"),
            "timeout",
        ) from None
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise _handshake_failed(url, exc, first) from None
    response = events[0]
    assert isinstance(response, Response)
    arrived = [p for op, p in Assembler().take(events[1:]) if op == OP_BINARY]  # type: ignore[arg-type]
    ws = ClientWebSocket(stream, proto, arrived)
    if not early or response.headers.get(EARLY_HEADER) != str(len(pipelined)):
        try:
            for message in pipelined:  # a relay that did not take them from the request
                await ws.send(message)
        except Closed as exc:
            raise ConnectError(
                f"lost the connection to relay {url} right after the WebSocket upgrade: {exc}",
                "network",
            ) from None
    return ws


def _handshake_failed(url: str, exc: BaseException | None, first: bytes) -> ConnectError:
    if isinstance(exc, InvalidStatus):
        return _refusal(url, exc.response)
    if _looks_like_tls(first) and url.startswith("ws://"):
        return ConnectError(f"relay {url} answered with TLS: use wss:// instead of ws://", "tls")
    if first.startswith(b"HTTP/"):  # an HTTP answer websockets does not take (HTTP/1.0, ...)
        status = _printable(first.split(b"\r\n", 1)[0][:80].decode("latin-1"))
        return ConnectError(
            f"{url} is not a pio-remote relay: it answered the WebSocket upgrade with "
            f"{status!r} (check the host, the port and the path of the relay URL)",
            "not_relay",
        )
    if not first and isinstance(exc, trio.BrokenResourceError):
        # A reset, not a close: the path dropped (or the server crashed), as it
        # can at any later moment too. Same failure, same message: no TLS hint.
        return ConnectError(
            f"lost the connection to relay {url} during the WebSocket upgrade "
            f"({exc or 'connection reset'}): check the network and try again",
            "network",
        )
    if not first:
        # A path that drops mid-upgrade looks exactly like this, so the message is the
        # one for a lost connection; a TLS relay asked in plain text answers with a
        # TLS alert, which _looks_like_tls recognised above.
        return ConnectError(
            f"lost the connection to relay {url} during the WebSocket upgrade "
            "(check the network, then try again)",
            "lost",
        )
    detail = (
        f": {exc}"
        if isinstance(exc, InvalidHandshake) and not isinstance(exc, InvalidStatus)
        else ""
    )
    return ConnectError(
        f"{url} is not a pio-remote relay: its answer is not a WebSocket upgrade{detail}",
        "not_relay",
    )
