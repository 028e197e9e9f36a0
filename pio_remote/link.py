"""One WebSocket connection from an agent or a client to the relay.

The link reads frames in one task and hands each to the handler registered for
its channel. Handlers are plain callbacks that must not block: the session layer
above bounds what it buffers with credits, so the reader never waits on one slow
session and never stalls the others.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from pio_remote import envelope, wsmask
from pio_remote.envelope import FrameType

log = logging.getLogger(__name__)
wsmask.install()

# trio-websocket reads 4 KiB at a time by default, which caps a 64 KiB frame
# stream at a fraction of loopback speed; 256 KiB reads a few frames per call.
RECEIVE_BUFFER = 256 * 1024
# Frames read but not yet handled; backpressure beyond this is TCP's.
MESSAGE_QUEUE = 8
CONNECT_TIMEOUT = 10.0
HELLO_TIMEOUT = 10.0
LIST_TIMEOUT = 10.0
MAX_PENDING_PONGS = 4
SEND_STALL_TIMEOUT = 30.0


class RelayError(Exception):
    """The relay refused us or went away; the message is for the user.

    ``code`` is the relay's ERROR code ("replaced", "token_revoked", ...), "auth"
    for a refused token, or "" when the connection was simply lost.
    """

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code


FrameHandler = Callable[[envelope.Frame], None]


@dataclass(frozen=True)
class Opened:
    agent_id: str
    key: bytes


class Link:
    """A live, authenticated connection to the relay."""

    def __init__(self, ws: WebSocketConnection, account: str, url: str):
        self._ws = ws
        self.account = account
        self.url = url
        self._handlers: dict[int, FrameHandler] = {}
        self._list_waiters: dict[int, trio.MemorySendChannel[envelope.Frame]] = {}
        self._ids = itertools.count(1)
        self.on_open: Callable[[int, str], None] | None = None
        self.closed_reason: str | None = None
        self.closed_code = ""
        self.error: RelayError | None = None
        self.nursery: trio.Nursery | None = None
        self.node: str | None = None  # the relay node, when the relay is one of several
        self._pending_pongs = 0

    # ---- sending ------------------------------------------------------------------

    async def send(self, frame: bytes) -> None:
        """Send one frame, whole or not at all.

        A send cancelled halfway would leave half a WebSocket frame on the wire and
        break every session on this link, and a Noise message encrypted but never
        sent breaks its session's nonce sequence. So the write is shielded, and
        bounded instead by SEND_STALL_TIMEOUT: a relay that reads nothing for that
        long has lost this link anyway.
        """
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + SEND_STALL_TIMEOUT
            try:
                await self._ws.send_message(frame)
            except ConnectionClosed as exc:
                raise RelayError(self._closed_text(exc)) from None
        if scope.cancelled_caught:
            if self.nursery is not None:
                self.nursery.cancel_scope.cancel()
            raise RelayError(f"relay accepted nothing for {SEND_STALL_TIMEOUT:g} s")

    async def send_data(self, channel: int, payload: bytes) -> None:
        await self.send(envelope.HEADER.pack(FrameType.DATA, channel) + payload)

    async def close_channel(self, channel: int, reason: str = "") -> None:
        self._handlers.pop(channel, None)
        try:
            await self.send(envelope.encode(FrameType.CLOSE, channel, reason.encode()[:1024]))
        except RelayError:
            pass

    # ---- channels -------------------------------------------------------------------

    def register(self, channel: int, handler: FrameHandler) -> None:
        self._handlers[channel] = handler

    def unregister(self, channel: int) -> None:
        self._handlers.pop(channel, None)

    async def open_channel(self, agent_ref: str, handler: FrameHandler) -> tuple[int, Opened]:
        """Client side: ask the relay for a channel to an agent; returns its resolved id/key."""
        channel = next(self._ids)
        send, receive = trio.open_memory_channel[envelope.Frame](1)
        self._handlers[channel] = send.send_nowait
        await self.send(envelope.encode(FrameType.OPEN, channel, agent_ref.encode()))
        with trio.fail_after(CONNECT_TIMEOUT):
            frame = await receive.receive()
        if frame.type is FrameType.CLOSE:
            self._handlers.pop(channel, None)
            raise RelayError(frame.text() or f"relay refused a channel to agent '{agent_ref}'")
        if frame.type is not FrameType.OPENED:
            raise RelayError(f"relay answered OPEN with {frame.type.name}")
        info = frame.json()
        self._handlers[channel] = handler
        return channel, Opened(str(info["agent"]), bytes.fromhex(info["key"]))

    async def list_agents(self) -> list[dict[str, Any]]:
        rid = next(self._ids)
        send, receive = trio.open_memory_channel[envelope.Frame](1)
        self._list_waiters[rid] = send
        try:
            await self.send(envelope.encode(FrameType.LIST, rid))
            with trio.fail_after(LIST_TIMEOUT):
                frame = await receive.receive()
        finally:
            self._list_waiters.pop(rid, None)
        return list(frame.json())

    # ---- receiving ------------------------------------------------------------------

    async def run(self) -> None:
        """Read frames until the relay closes; then raise RelayError with the reason."""
        try:
            while True:
                message = await self._ws.get_message()
                if isinstance(message, str):
                    raise RelayError("relay sent a text message; is this a pio-remote relay?")
                self._dispatch(envelope.decode(message))
        except ConnectionClosed as exc:
            raise RelayError(self._closed_text(exc), self.closed_code) from None
        finally:
            handlers, self._handlers = self._handlers, {}
            for channel, handler in handlers.items():
                gone = envelope.Frame(FrameType.CLOSE, channel, b"relay connection lost")
                handler(gone)

    def _dispatch(self, frame: envelope.Frame) -> None:
        ftype = frame.type
        if ftype is FrameType.DATA or ftype is FrameType.CLOSE or ftype is FrameType.OPENED:
            handler = self._handlers.get(frame.channel)
            if ftype is FrameType.CLOSE:
                self._handlers.pop(frame.channel, None)
            if handler is not None:
                handler(frame)
        elif ftype is FrameType.OPEN:
            if self.on_open is not None:
                self.on_open(frame.channel, frame.text())
        elif ftype is FrameType.LIST:
            waiter = self._list_waiters.get(frame.channel)
            if waiter is not None:
                waiter.send_nowait(frame)
        elif ftype is FrameType.PING:
            # The relay pings rarely; a flood of pings gets dropped, not queued.
            if self.nursery is not None and self._pending_pongs < MAX_PENDING_PONGS:
                self._pending_pongs += 1
                self.nursery.start_soon(self._pong, frame.payload)
        elif ftype is FrameType.ERROR:
            info = frame.json()
            self.closed_reason = str(info.get("message") or info.get("code"))
            self.closed_code = str(info.get("code", ""))

    async def _pong(self, payload: bytes) -> None:
        try:
            await self.send(envelope.encode(FrameType.PONG, 0, payload))
        except RelayError:
            pass
        finally:
            self._pending_pongs -= 1

    async def run_guarded(self, scope: trio.CancelScope) -> None:
        """Run the reader; when the relay goes, keep the reason and stop the link's block."""
        try:
            await self.run()
        except RelayError as exc:
            self.error = exc
            scope.cancel()

    def _closed_text(self, exc: ConnectionClosed) -> str:
        if self.closed_reason:
            return f"relay closed the connection: {self.closed_reason}"
        reason = exc.reason
        detail = f" ({reason.reason})" if reason and reason.reason else ""
        code = reason.code if reason else "?"
        return f"relay connection closed, code {code}{detail}"


@asynccontextmanager
async def connect(
    url: str, token: str, hello: dict[str, Any], params: dict[str, str] | None = None
) -> AsyncIterator[Link]:
    """Connect, authenticate and say HELLO; the link's reader runs inside the block.

    ``params`` go in the URL: ``agent=OWNER/NAME`` lets a load balancer in front
    of several relay nodes send an agent and its clients to one node.
    """
    role = hello["role"]
    ws_url = f"{url.rstrip('/')}/v1/{role}"
    if params:
        ws_url += "?" + urlencode(params, safe="/")
    headers = [("Authorization", f"Bearer {token}")]
    async with AsyncExitStack() as stack:
        try:
            ws = await stack.enter_async_context(
                open_websocket_url(
                    ws_url,
                    extra_headers=headers,
                    message_queue_size=MESSAGE_QUEUE,
                    max_message_size=envelope.MAX_FRAME_SIZE,
                    receive_buffer_size=RECEIVE_BUFFER,
                    connect_timeout=CONNECT_TIMEOUT,
                    disconnect_timeout=2,
                )
            )
        except ConnectionRejected as exc:
            body = (exc.body or b"").decode("utf-8", "replace").strip()
            code = "auth" if exc.status_code in (401, 403) else "rejected"
            raise RelayError(
                f"relay {url} refused the connection ({exc.status_code}): {body}", code
            ) from None
        except (HandshakeError, OSError, trio.TooSlowError) as exc:
            raise RelayError(
                f"cannot reach relay {url}: {str(exc) or type(exc).__name__}"
            ) from None
        link = await _hello(ws, url, hello)
        body_error: Exception | None = None
        async with trio.open_nursery() as nursery:
            link.nursery = nursery
            nursery.start_soon(link.run_guarded, nursery.cancel_scope)
            try:
                yield link
            except Exception as exc:
                # Re-raised below, outside the nursery, so callers get the plain
                # exception and not an ExceptionGroup around it.
                body_error = exc
            nursery.cancel_scope.cancel()
        if body_error is not None:
            raise body_error
        if link.error is not None:
            raise link.error


async def _hello(ws: WebSocketConnection, url: str, hello: dict[str, Any]) -> Link:
    hello = {"version": envelope.PROTOCOL_VERSION, **hello}
    await ws.send_message(envelope.encode_json(FrameType.HELLO, 0, hello))
    try:
        with trio.fail_after(HELLO_TIMEOUT):
            frame = envelope.decode(await ws.get_message())
    except trio.TooSlowError:
        raise RelayError(f"relay {url} did not answer HELLO") from None
    except ConnectionClosed as exc:
        raise RelayError(f"relay {url} closed the connection during HELLO: {exc}") from None
    if frame.type is FrameType.ERROR:
        info = frame.json()
        raise RelayError(
            f"relay {url} refused HELLO: {info.get('message', info)}", str(info.get("code", ""))
        )
    if frame.type is not FrameType.WELCOME:
        raise RelayError(f"relay {url} answered HELLO with {frame.type.name}")
    info = frame.json()
    lnk = Link(ws, str(info["account"]), url)
    lnk.node = info.get("node")
    return lnk
