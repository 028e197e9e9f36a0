"""One WebSocket connection from an agent or a client to the relay.

The link reads frames in one task and hands each to the handler registered for
its channel. Handlers are plain callbacks that must not block: the session layer
above bounds what it buffers with credits, so the reader never waits on one slow
session and never stalls the others.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import trio

from pio_remote.net import wsclient, wsio
from pio_remote.net.wsclient import ConnectError
from pio_remote.net.wsio import ClientWebSocket, Closed
from pio_remote.wire import envelope
from pio_remote.wire.envelope import FrameType

log = logging.getLogger(__name__)

# Deadlines of the phases after the WebSocket is up (TCP, TLS and the upgrade
# each have wsclient.CONNECT_TIMEOUT): the relay's WELCOME, its answer to OPEN
# and to LIST.
HELLO_TIMEOUT = 10.0
OPEN_TIMEOUT = 10.0
LIST_TIMEOUT = 10.0
MAX_PENDING_PONGS = 4
SEND_STALL_TIMEOUT = wsio.SEND_STALL_TIMEOUT


# RelayError.code when the relay answered but cannot reach the agent (offline, not
# shared, busy): the relay is up, so a reconnecting client need not slow down.
UNREACHABLE = "unreachable"


class RelayError(Exception):
    """The relay refused us or went away; the message is for the user.

    ``code`` is the relay's ERROR code ("replaced", "token_revoked", ...), "auth"
    for a refused token, or "" when the connection was simply lost.
    """

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code


FrameHandler = Callable[[envelope.Frame], None]

# What the relay may call an agent ("owner/name", each part as pio_remote/relay/accounts.py's
# NAME_PATTERN), and an agent's key (X25519, hex): anything else in an answer is
# a relay fault, reported in one line instead of failing deep inside a command.
_NAME = r"[A-Za-z0-9._-]{1,64}"
_AGENT_REF = re.compile(rf"{_NAME}/{_NAME}")
_NAME_RE = re.compile(_NAME)
_KEY_HEX = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class Opened:
    agent_id: str
    key: bytes


@dataclass
class PendingOpen:
    """A channel asked for (``frames`` hold its OPEN) whose OPENED has not been taken yet."""

    agent_ref: str
    channel: int
    frames: list[bytes]
    answer: list[envelope.Frame]
    arrived: trio.Event


def _brief(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _field(row: dict[str, Any], name: str, pattern: re.Pattern[str], what: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise RelayError(f"'{name}' {_brief(value)} is not {what}")
    return value


def check_opened(info: object) -> Opened:
    """The relay's OPENED payload, checked; RelayError names what is wrong."""
    try:
        if not isinstance(info, dict):
            raise RelayError("not a JSON object")
        agent = _field(info, "agent", _AGENT_REF, "an agent 'owner/name'")
        key = _field(info, "key", _KEY_HEX, "an agent key (64 hex digits)")
    except RelayError as exc:
        raise RelayError(f"relay sent a malformed OPENED: {exc}") from None
    return Opened(agent, bytes.fromhex(key))


def check_welcome(info: object) -> tuple[str, str | None]:
    """(account, node) from the relay's WELCOME; RelayError names what is wrong."""
    try:
        if not isinstance(info, dict):
            raise RelayError("not a JSON object")
        account = _field(info, "account", _NAME_RE, "an account name")
        node = info.get("node")
        if node is not None and not isinstance(node, str):
            raise RelayError(f"'node' {_brief(node)} is not a string")
    except RelayError as exc:
        raise RelayError(f"relay sent a malformed WELCOME: {exc}") from None
    return account, node


def error_info(frame: envelope.Frame) -> tuple[str, str]:
    """(code, message) of the relay's ERROR frame, whatever its payload holds."""
    try:
        info = frame.json()
    except envelope.EnvelopeError:
        info = {"message": frame.payload[:200].decode("utf-8", "replace")}
    if not isinstance(info, dict):
        info = {"message": str(info)[:200]}
    code = str(info.get("code", ""))
    return code, str(info.get("message") or code or "no reason given")


def check_agent_list(rows: object) -> list[dict[str, Any]]:
    """The relay's LIST payload, each row checked; RelayError names the bad row.

    Rows keep their fields (``node`` too, for clustered relays); ``agent``,
    ``owner``, ``name`` and ``key`` are always well-formed strings afterwards.
    """
    if not isinstance(rows, list):
        raise RelayError("relay sent a malformed agent list: not a JSON list")
    for n, row in enumerate(rows, 1):
        try:
            if not isinstance(row, dict):
                raise RelayError("not a JSON object")
            _field(row, "agent", _AGENT_REF, "an agent 'owner/name'")
            _field(row, "owner", _NAME_RE, "an account name")
            _field(row, "name", _NAME_RE, "an agent name")
            _field(row, "key", _KEY_HEX, "an agent key (64 hex digits)")
            for name in ("connected_at", "node"):
                if row.get(name) is not None and not isinstance(row[name], str):
                    raise RelayError(f"'{name}' {_brief(row[name])} is not a string")
        except RelayError as exc:
            raise RelayError(f"relay sent a malformed agent list: row {n}: {exc}") from None
    return rows


class Link:
    """A live, authenticated connection to the relay.

    Each channel has one handler, registered with the channel and removed with
    it (CLOSE from either side, a failed or abandoned open, a bad frame). The
    reader calls handlers synchronously; a handler that raises ends its own
    channel, never the link.
    """

    def __init__(self, ws: ClientWebSocket | None, account: str, url: str):
        # None until connect() has it: channels may be prepared before that.
        self._ws: ClientWebSocket = ws  # type: ignore[assignment]
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

        A Noise message encrypted but never sent breaks its session's nonce
        sequence, so the frame is framed into the socket's buffer before any
        wait; a relay that takes nothing for SEND_STALL_TIMEOUT ends the link.
        """
        try:
            await self._ws.send(frame)
        except Closed as exc:
            if self._ws.stalled and self.nursery is not None:
                self.nursery.cancel_scope.cancel()
            raise RelayError(self._closed_text(exc)) from None

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

    def _spawn_close(self, channel: int, reason: str) -> None:
        self._handlers.pop(channel, None)
        if self.nursery is not None:
            self.nursery.start_soon(self.close_channel, channel, reason)

    def prepare_open(
        self, agent_ref: str, handler: FrameHandler, first: bytes | None = None
    ) -> PendingOpen:
        """Register a channel to ``agent_ref``; its OPEN (and ``first``) are for the caller to send.

        ``first`` (the handshake's first message) goes right behind OPEN, without
        waiting for OPENED: the relay routes the channel as it reads OPEN, so the
        agent gets OPEN and then the message, in order. ``handler`` takes over in
        the reader the moment OPENED arrives, so a CLOSE right behind it reaches
        the handler.
        """
        channel = next(self._ids)
        pending = PendingOpen(agent_ref, channel, [], [], trio.Event())
        pending.frames.append(envelope.encode(FrameType.OPEN, channel, agent_ref.encode()))
        if first is not None:
            pending.frames.append(envelope.HEADER.pack(FrameType.DATA, channel) + first)

        def answered(frame: envelope.Frame) -> None:
            pending.answer.append(frame)
            pending.arrived.set()
            if frame.type is FrameType.OPENED:
                self._handlers[channel] = handler
            else:
                self._handlers.pop(channel, None)

        self._handlers[channel] = answered
        return pending

    async def open_channel(
        self,
        agent_ref: str,
        handler: FrameHandler,
        timeout: float = OPEN_TIMEOUT,
        first: bytes | None = None,
    ) -> tuple[int, Opened]:
        """Client side: ask the relay for a channel to an agent; returns its resolved id/key.

        See ``prepare_open``. If this call ends without OPENED (timeout, cancel,
        refusal), the channel's handler goes with it, and an OPENED that comes
        later is answered with CLOSE.
        """
        pending = self.prepare_open(agent_ref, handler, first)
        try:
            for frame in pending.frames:
                await self.send(frame)
        except BaseException:
            self._abandon(pending.channel, pending.answer)
            raise
        return await self.finish_open(pending, timeout)

    async def finish_open(
        self, pending: PendingOpen, timeout: float = OPEN_TIMEOUT
    ) -> tuple[int, Opened]:
        """Wait for the relay's answer to a sent OPEN; RelayError if it refused."""
        channel, agent_ref, answer = pending.channel, pending.agent_ref, pending.answer
        taken = False
        try:
            with trio.fail_after(timeout):
                await pending.arrived.wait()
            frame = answer[0]
            if frame.type is FrameType.CLOSE:
                raise RelayError(
                    frame.text() or f"relay refused a channel to agent '{agent_ref}'", UNREACHABLE
                )
            if frame.type is not FrameType.OPENED:
                raise RelayError(f"relay answered OPEN with {frame.type.name}")
            try:
                opened = check_opened(frame.json())
            except envelope.EnvelopeError as exc:
                raise RelayError(f"relay sent a malformed OPENED: {exc}") from None
            taken = True
            return channel, opened
        except trio.TooSlowError:
            raise RelayError(
                f"relay did not answer the request for a channel to agent '{agent_ref}' "
                f"within {timeout:g} s"
            ) from None
        finally:
            if not taken:
                self._abandon(channel, answer)

    def abandon(self, pending: PendingOpen) -> None:
        """Give up a prepared open nobody will finish."""
        if not pending.arrived.is_set() or pending.answer[0].type is FrameType.OPENED:
            self._abandon(pending.channel, pending.answer)

    def _abandon(self, channel: int, answer: list[envelope.Frame]) -> None:
        """Forget a channel whose open did not complete; close it if the relay opened it."""
        if answer and answer[0].type is FrameType.OPENED:
            self._spawn_close(channel, "")
            return
        if answer:  # refused: the relay has forgotten it too
            self._handlers.pop(channel, None)
            return

        def late(frame: envelope.Frame) -> None:
            if frame.type is FrameType.OPENED:
                self._spawn_close(channel, "")
            else:
                self._handlers.pop(channel, None)

        self._handlers[channel] = late

    async def list_agents(self) -> list[dict[str, Any]]:
        rid = next(self._ids)
        send, receive = trio.open_memory_channel[envelope.Frame](1)
        self._list_waiters[rid] = send
        try:
            await self.send(envelope.encode(FrameType.LIST, rid))
            with trio.fail_after(LIST_TIMEOUT):
                frame = await receive.receive()
        except trio.TooSlowError:
            raise RelayError(f"relay did not answer LIST within {LIST_TIMEOUT:g} s") from None
        finally:
            self._list_waiters.pop(rid, None)
        try:
            return check_agent_list(frame.json())
        except envelope.EnvelopeError as exc:
            raise RelayError(f"relay sent a malformed agent list: {exc}") from None

    # ---- receiving ------------------------------------------------------------------

    async def run(self) -> None:
        """Read frames until the relay closes; then raise RelayError with the reason.

        Errors are classified: the connection closing or breaking ends the link;
        a frame the envelope cannot decode means the relay broke the protocol
        and ends the link; a frame that one channel's handler cannot take ends
        that channel only.
        """
        receive = self._ws.receive
        decode = envelope.decode
        try:
            while True:
                for message in await receive():
                    try:
                        frame = decode(message)
                    except envelope.EnvelopeError as exc:
                        raise RelayError(f"relay sent a malformed frame: {exc}") from None
                    self._dispatch(frame)
        except Closed as exc:
            raise RelayError(self._closed_text(exc), self.closed_code) from None
        finally:
            handlers, self._handlers = self._handlers, {}
            for channel, handler in handlers.items():
                gone = envelope.Frame(FrameType.CLOSE, channel, b"relay connection lost")
                try:
                    handler(gone)
                except Exception:
                    log.exception("handler of channel %d failed on link loss", channel)

    def _dispatch(self, frame: envelope.Frame) -> None:
        ftype = frame.type
        if ftype is FrameType.DATA or ftype is FrameType.CLOSE or ftype is FrameType.OPENED:
            handler = self._handlers.get(frame.channel)
            if ftype is FrameType.CLOSE:
                self._handlers.pop(frame.channel, None)
            if handler is not None:
                self._deliver(handler, frame)
            elif ftype is FrameType.OPENED:
                self._spawn_close(frame.channel, "")  # nobody asked (any more)
        elif ftype is FrameType.OPEN:
            if self.on_open is not None:
                try:
                    self.on_open(frame.channel, frame.text())
                except Exception as exc:
                    log.warning("cannot take channel %d: %s", frame.channel, exc)
                    self._spawn_close(frame.channel, "agent could not take the channel")
        elif ftype is FrameType.LIST:
            waiter = self._list_waiters.pop(frame.channel, None)
            if waiter is not None:
                waiter.send_nowait(frame)  # buffer of 1, used once
        elif ftype is FrameType.PING:
            # The relay pings rarely; a flood of pings gets dropped, not queued.
            if self.nursery is not None and self._pending_pongs < MAX_PENDING_PONGS:
                self._pending_pongs += 1
                self.nursery.start_soon(self._pong, frame.payload)
        elif ftype is FrameType.ERROR:
            self.closed_code, self.closed_reason = error_info(frame)

    def _deliver(self, handler: FrameHandler, frame: envelope.Frame) -> None:
        """Hand ``frame`` to its channel; a handler that fails ends that channel only."""
        try:
            handler(frame)
        except Exception as exc:
            channel = frame.channel
            log.warning("channel %d: bad %s frame (%s): closing it", channel, frame.type.name, exc)
            self._spawn_close(channel, "bad frame")
            if frame.type is not FrameType.CLOSE:
                gone = envelope.Frame(FrameType.CLOSE, channel, f"bad frame: {exc}".encode())
                try:
                    handler(gone)
                except Exception:
                    log.exception("handler of channel %d failed while closing", channel)

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

    def _closed_text(self, exc: Closed) -> str:
        if self.closed_reason:
            return f"relay closed the connection: {self.closed_reason}"
        detail = f" ({exc.reason})" if exc.reason else ""
        return f"relay connection closed, code {exc.code}{detail}"


@asynccontextmanager
async def connect(
    url: str,
    token: str,
    hello: dict[str, Any],
    params: dict[str, str] | None = None,
    prepare: Callable[[Link], list[bytes]] | None = None,
) -> AsyncIterator[Link]:
    """Connect, authenticate and say HELLO; the link's reader runs inside the block.

    ``params`` go in the URL: ``agent=OWNER/NAME`` lets a load balancer in front
    of several relay nodes send an agent and its clients to one node.
    ``prepare`` may set up channels on the link before it is connected; the
    frames it returns (OPENs, say) go with HELLO, behind the upgrade request.
    """
    role = hello["role"]
    path = f"/v1/{role}"
    if params:
        path += "?" + urlencode(params, safe="/")
    hello = {"version": envelope.PROTOCOL_VERSION, **hello}
    link = Link(None, "", url)
    frames = prepare(link) if prepare is not None else []
    try:
        # HELLO (and what ``prepare`` gave) ride behind the upgrade request:
        # WELCOME comes with the 101.
        ws = await wsclient.connect(
            url,
            path,
            [("Authorization", f"Bearer {token}")],
            max_size=envelope.MAX_FRAME_SIZE,
            pipelined=[envelope.encode_json(FrameType.HELLO, 0, hello), *frames],
        )
    except ConnectError as exc:
        raise RelayError(str(exc), exc.kind) from None
    try:
        await _welcome(ws, url, link)
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
    finally:
        with trio.CancelScope(shield=True):
            await ws.aclose()
    if body_error is not None:
        raise body_error
    if link.error is not None:
        raise link.error


async def _welcome(ws: ClientWebSocket, url: str, lnk: Link) -> None:
    """The relay's answer to the HELLO sent with the upgrade request; ``lnk`` takes it.

    Waits on purpose: nothing a peer sends before WELCOME may depend on it, but the
    link must know its account (and a refused HELLO must stop the command) first.
    """
    try:
        with trio.fail_after(HELLO_TIMEOUT):
            first, *rest = await ws.receive()
            ws.unread(rest)  # frames right behind WELCOME are the link reader's
            frame = envelope.decode(first)
    except trio.TooSlowError:
        raise RelayError(f"relay {url} did not answer HELLO within {HELLO_TIMEOUT:g} s") from None
    except Closed as exc:
        raise RelayError(f"relay {url} closed the connection during HELLO: {exc}") from None
    except envelope.EnvelopeError as exc:
        raise RelayError(f"relay {url} answered HELLO with a malformed frame: {exc}") from None
    if frame.type is FrameType.ERROR:
        code, message = error_info(frame)
        raise RelayError(f"relay {url} refused HELLO: {message}", code)
    if frame.type is not FrameType.WELCOME:
        raise RelayError(f"relay {url} answered HELLO with {frame.type.name}")
    try:
        account, node = check_welcome(frame.json())
    except envelope.EnvelopeError as exc:
        raise RelayError(f"relay {url} sent a malformed WELCOME: {exc}") from None
    lnk._ws = ws
    lnk.account = account
    lnk.node = node
