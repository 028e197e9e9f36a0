"""An end-to-end session over one relay channel, after the Noise handshake.

``SecureChannel`` wires the sans-IO ``Session`` to the relay link: frames from the
link are decrypted and parsed synchronously in the link's reader (never blocking
it), and each call's items land in that call's ``Inbox``, whose size the session
bounds with credits. Sends take one lock around "build message, encrypt, send"
because Noise nonces must reach the wire in the order they were used.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from pio_remote.net.link import Link, RelayError
from pio_remote.wire import envelope, session
from pio_remote.wire.e2e import DecryptError, Transport
from pio_remote.wire.envelope import FrameType
from pio_remote.wire.session import MAX_BODY, CallResult, Session

log = logging.getLogger(__name__)

# Session-level PONGs being sent at once; PINGs beyond this are dropped (the
# link caps the relay's PINGs the same way).
MAX_PENDING_PONGS = 4


class ChannelClosed(Exception):
    """The session ended; the message says why, for the user."""


class _Eof:
    pass


EOF = _Eof()
InboxItem = bytes | session.Event | _Eof | CallResult


class Inbox:
    """Items received on one call. Bounded by the sender's credit, not by a count."""

    def __init__(self) -> None:
        self._items: deque[InboxItem] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self.error: Exception | None = None

    def put(self, item: InboxItem) -> None:
        self._items.append(item)
        self._lot.unpark_all()

    def fail(self, error: Exception) -> None:
        self.error = error
        self._lot.unpark_all()

    async def get(self) -> InboxItem:
        while not self._items:
            if self.error is not None:
                raise self.error
            await self._lot.park()
        return self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)


class Call:
    """One call's two streams, events and result, as seen from either end."""

    def __init__(self, channel: SecureChannel, call_id: int, method: str, params: dict[str, Any]):
        self.channel = channel
        self.call_id = call_id
        self.method = method
        self.params = params
        self.inbox = Inbox()
        self._credit_lot = trio.lowlevel.ParkingLot()
        self.result: CallResult | None = None
        self.remote_eof = False
        self.cancel_scope: trio.CancelScope | None = None
        # The peer asked to end this call (CANCEL), as opposed to losing the session:
        # a monitor keeps its port for a resume only in the second case.
        self.cancel_requested = False
        self.reading = False  # has asked for its input: the agent grants credit from then on
        self.credit: Any = None  # the agent's share of its memory budget (agent/membudget.py)

    # ---- sending ------------------------------------------------------------------

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send bytes, waiting for credit: the peer's reading pace sets ours."""
        view = memoryview(data)
        sess = self.channel.session
        while view:
            while True:
                self.channel.check()
                if not sess.is_open(self.call_id):
                    raise ChannelClosed(f"call {self.method} has ended")
                credit = sess.send_credit(self.call_id)
                if credit > 0:
                    break
                await self._credit_lot.park()
            size = min(len(view), credit, MAX_BODY)
            chunk = bytes(view[:size])
            view = view[size:]
            # Built under the send lock, which may have made us wait: the peer can
            # have ended the call since the check above.
            await self.channel.send(lambda c=chunk: self._open_session().send_data(self.call_id, c))

    async def send_event(self, body: dict[str, Any]) -> None:
        """An EVENT may overdraw by one message, but a client's needs some credit first."""
        sess = self.channel.session
        while True:
            self.channel.check()
            if (
                sess.role is not session.Role.CLIENT
                or self._open_session().send_credit(self.call_id) > 0
            ):
                try:
                    await self.channel.send(
                        lambda: self._open_session().send_event(self.call_id, body)
                    )
                    return
                except session.LocalProtocolError:
                    if not sess.is_open(self.call_id) or sess.send_credit(self.call_id) > 0:
                        raise
            await self._credit_lot.park()

    async def send_eof(self) -> None:
        await self.channel.send(lambda: self._open_session().send_eof(self.call_id))

    def _open_session(self) -> Session:
        """The session, if this call is still open; the peer may have ended it meanwhile."""
        sess = self.channel.session
        if not sess.is_open(self.call_id):
            raise ChannelClosed(f"call {self.method} has ended")
        return sess

    def credit_granted(self) -> None:
        self._credit_lot.unpark_all()

    # ---- receiving ------------------------------------------------------------------

    async def receive(self) -> bytes | dict[str, Any] | None:
        """Next DATA (bytes) or EVENT (dict); None once the peer's stream has ended."""
        if not self.reading:
            self.reading = True
            await self.channel.start_input(self)
        while True:
            item = await self.inbox.get()
            if isinstance(item, bytes):
                await self.channel.input_consumed(self, len(item))
                return item
            if isinstance(item, session.Event):
                await self.channel.input_consumed(self, item.size)
                return item.body
            if isinstance(item, CallResult):
                self.result = item
                self.inbox.put(item)  # keep it for the next receive() and for wait_result()
                return None
            self.remote_eof = True
            return None


class SecureChannel:
    """Encrypts, sends, receives and dispatches for one end of one session."""

    def __init__(self, link: Link, channel_id: int, transport: Transport, sess: Session):
        self.link = link
        self.channel_id = channel_id
        self.transport = transport
        self.session = sess
        self.calls: dict[int, Call] = {}
        self.error: ChannelClosed | None = None
        self.closed = trio.Event()
        self._send_lock = trio.StrictFIFOLock()
        self._pending_pongs = 0

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    async def start_input(self, call: Call) -> None:
        """A call reads its input for the first time (the agent grants credit then)."""

    async def input_consumed(self, call: Call, size: int) -> None:
        """The application used ``size`` received bytes: maybe grant credit back."""
        message = self.session.consumed(call.call_id, size)
        if message is not None:
            await self.send_quietly(message)

    async def send_quietly(self, message: bytes) -> None:
        """Send a message whose loss does not matter once the session has ended."""
        try:
            await self.send(lambda: message)
        except ChannelClosed:
            pass

    async def send(self, build: Callable[[], bytes]) -> None:
        lock = self._send_lock
        # Uncontended (the usual case), take the lock without a trip through the
        # scheduler; the send itself still checkpoints.
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()
        try:
            self.check()
            ciphertext = self.transport.encrypt(build())
            try:
                await self.link.send_data(self.channel_id, ciphertext)
            except RelayError as exc:
                self.fail(f"relay connection lost: {exc}")
                raise self.error from None  # type: ignore[misc]
        finally:
            lock.release()

    def on_frame(self, frame: envelope.Frame) -> None:
        """Called by the link's reader for each frame on this channel; never blocks."""
        if self.error is not None:
            return
        if frame.type is FrameType.CLOSE:
            self.fail(self.describe_close(frame.text() if frame.payload else ""), notify=False)
            return
        if frame.type is not FrameType.DATA:
            return
        try:
            events = self.session.receive(self.transport.decrypt(frame.payload))
        except DecryptError:
            self.fail("a message failed authentication: it was altered in transit")
            return
        except session.RemoteProtocolError as exc:
            self.fail(f"peer broke the session protocol: {exc}")
            return
        for event in events:
            self.handle_event(event)

    def describe_close(self, reason: str) -> str:
        return reason or "the peer closed the session"

    def handle_event(self, event: session.SessionEvent) -> None:
        call = self.calls.get(getattr(event, "call_id", -1))
        match event:
            case session.Data(data=data):
                if call is not None:
                    call.inbox.put(data)
            case session.Event():
                if call is not None:
                    call.inbox.put(event)
            case session.CreditGranted():
                if call is not None:
                    call.credit_granted()
            case session.EndOfStream():
                if call is not None:
                    call.inbox.put(EOF)
            case session.Ping(nonce=nonce):
                # A peer's keepalive needs one answer at a time; a flood of pings
                # is dropped, not turned into a task each.
                if self._pending_pongs < MAX_PENDING_PONGS:
                    self._pending_pongs += 1
                    self.spawn(self._pong, nonce)
            case _:
                self.handle_other(event)

    async def _pong(self, nonce: int) -> None:
        try:
            await self.send(lambda: self.session.pong(nonce))
        finally:
            self._pending_pongs -= 1

    def handle_other(self, event: session.SessionEvent) -> None:
        """Role-specific events (calls, results, cancels, goaway)."""

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        nursery = self.link.nursery
        if nursery is not None:
            nursery.start_soon(_quietly, fn, *args)

    def fail(self, reason: str, *, notify: bool = True) -> None:
        """End the session: wake every waiter with the reason and tell the relay."""
        if self.error is not None:
            return
        self.error = ChannelClosed(reason)
        log.debug("channel %d closed: %s", self.channel_id, reason)
        for call in self.calls.values():
            call.inbox.fail(self.error)
            call.credit_granted()
            if call.cancel_scope is not None:
                call.cancel_scope.cancel()
        self.link.unregister(self.channel_id)
        if notify:
            self.spawn(self.link.close_channel, self.channel_id, "")
        self.closed.set()


async def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    try:
        await fn(*args)
    except (ChannelClosed, RelayError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
