"""One connection's state, its limits and its close codes.

``Connection`` is the router's ``Peer`` plus the socket side (stream, its
websockets protocol object, send queue, timers); ``session.py`` runs it.
"""

from __future__ import annotations

import trio

from pio_remote.relay import websocket as wsp
from pio_remote.relay.outbox import Outbox
from pio_remote.relay.router import Peer
from pio_remote.wire import envelope
from pio_remote.wire.envelope import FrameType

# WebSocket close codes (4000-4999 are for applications, RFC 6455 7.4.2).
CLOSE_GOING_AWAY = 1001  # relay shutting down
CLOSE_BAD_INPUT = 4400  # malformed frame or unsupported protocol version
CLOSE_TOKEN_REVOKED = 4401
CLOSE_TIMED_OUT = 4408  # no HELLO, idle, or not reading (write stall, slow consumer)
CLOSE_REPLACED = 4409  # the same agent (same key) connected again
CLOSE_NAME_TAKEN = 4409  # HELLO refused: another key holds the name (a conflict, as HTTP 409)

# Bytes asked of the socket per read: several full frames per system call.
# Only allocated while data arrives, never held by an idle connection.
RECEIVE_BYTES = 256 * 1024

# The writer joins queued frames into one send of about this size.
WRITE_BATCH_BYTES = 256 * 1024

# Bound on the goodbye (ERROR frame and close handshake) to a leaving peer.
CLOSE_TIMEOUT = 2.0

# After a framing error the stream cannot be parsed; the peer gets this long
# to take our Close before the TCP connection is closed.
LINGER_S = 0.5

# When a connection is killed mid-write, the writer gets this long to finish
# so the stream stays well-formed for the ERROR that follows.
FLUSH_GRACE_S = 1.0

# Longest ERROR message sent; a bound on text that may quote peer input.
MAX_ERROR_MESSAGE = 1000


def revoked_message(account: str) -> str:
    """What a connection whose token was revoked (or account removed) is told."""
    return (
        f"the token for account '{account}' was revoked or the account was removed: ask "
        f"the relay admin for a new one ('pio-remote relay token {account} --regenerate')"
    )


class WireBytes(bytes):
    """Bytes already framed for the wire (a pong); the writer sends them as they are."""


class Connection(Peer):
    """A Peer plus its socket-side state (one object per connection)."""

    __slots__ = (
        "stream",
        "ws",
        "token_hash",
        "remote",
        "outbox",
        "scope",
        "write_scope",
        "started",
        "last_seen",
        "pinged_at",
        "writing_since",
        "closing",
        "ending",
        "goodbye",
        "close_code",
        "close_reason",
    )

    def __init__(
        self,
        role: str,
        account: str,
        token_hash: str,
        stream: trio.abc.Stream,
        remote: str,
        ws: wsp.ServerSocket,
        queue_bytes: int,
    ) -> None:
        super().__init__(role, account)
        self.stream = stream
        self.ws = ws  # the protocol object that answered the upgrade
        self.token_hash = token_hash
        self.remote = remote
        # This peer's send queue, bounded in bytes: others put frames in, the writer drains it.
        self.outbox = Outbox(queue_bytes)
        self.scope: trio.CancelScope | None = None
        self.write_scope: trio.CancelScope | None = None
        self.started = self.last_seen = self.pinged_at = trio.current_time()
        self.writing_since = 0.0  # 0 when the writer is not inside a send
        self.closing = False
        # How the goodbye goes: "close" (Close handshake), "echo" (answer the
        # peer's Close), "linger" (framing error: Close, then drain briefly),
        # "abort" (stream unusable: just drop TCP).
        self.ending = "close"
        self.goodbye: bytes | None = None  # ERROR frame sent before the Close
        self.close_code = CLOSE_GOING_AWAY
        self.close_reason = "relay shutting down"

    def kill(self, code: str, message: str, ws_code: int) -> None:
        """Send ERROR ``{code, message}``, close with ``ws_code``; callable from any task."""
        if self.closing:
            return
        self.closing = True
        self.goodbye = envelope.encode_json(
            FrameType.ERROR,
            envelope.CONTROL_CHANNEL,
            {"code": code, "message": message[:MAX_ERROR_MESSAGE]},
        )
        self.close_code = ws_code
        self.close_reason = code
        if self.scope is not None:
            self.scope.cancel()
        if self.write_scope is not None:
            grace = trio.current_time() + FLUSH_GRACE_S
            self.write_scope.deadline = min(self.write_scope.deadline, grace)

    def ended(self, how: str, reason: str, code: int = wsp.CLOSE_NORMAL) -> None:
        """The peer closed or vanished: no ERROR, just the matching goodbye."""
        if self.closing:
            return
        self.closing = True
        self.ending = how
        self.close_code = code
        self.close_reason = reason

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]} from {self.remote}>"
