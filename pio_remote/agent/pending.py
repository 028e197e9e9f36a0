"""Channels waiting for their client's handshake: the trio shell around
handshake.PendingHandshakes (which decides, purely, which ones to close).

Each pending channel's wait runs in a cancel scope kept here by ticket; making room
for a newer channel cancels the oldest one's wait, and that channel's own task
closes it and says why. Every wait also ends at ``handshake_timeout``.
"""

from __future__ import annotations

import itertools
import logging

import trio

from pio_remote.agent.config import AgentConfig
from pio_remote.agent.handshake import PendingHandshakes
from pio_remote.wire.envelope import Frame, FrameType

log = logging.getLogger("pio_remote.agent")

# Seconds between log lines about one account's channels that never handshake.
FLOOD_WARN_INTERVAL = 60.0


class Pending:
    def __init__(self, config: AgentConfig):
        self.timeout = config.handshake_timeout
        self.book = PendingHandshakes(
            config.max_pending_handshakes_per_account, config.max_pending_handshakes
        )
        self._waiting: dict[int, trio.CancelScope] = {}
        self._tickets = itertools.count()  # never reused, unlike the relay's channel ids
        self._warned: dict[str, float] = {}  # account -> trio time of its last warning

    def admit(self, account: str) -> int:
        """Count a new channel from ``account``; returns its ticket (sync: on_open calls it)."""
        ticket = next(self._tickets)
        evicted = self.book.open(ticket, account)
        for old in evicted:
            self._waiting[old].cancel()
        self._waiting[ticket] = trio.CancelScope()
        if evicted:
            self._warn_flood(account)
        return ticket

    async def first_frame(
        self, ticket: int, account: str, early: trio.MemoryReceiveChannel[Frame]
    ) -> tuple[Frame | None, str]:
        """The client's first frame, or None and the reason to close the channel."""
        frame: Frame | None = None
        with self._waiting[ticket], trio.move_on_after(self.timeout) as deadline:
            frame = await early.receive()
        if not self.book.finish(ticket):
            log.debug("pending channel from account %s evicted", account)
            return None, (
                f"too many channels from account {account} waiting for a handshake: "
                "closed the oldest"
            )
        if deadline.cancelled_caught:
            log.debug("channel from %s sent no handshake within %d s", account, self.timeout)
            return None, f"no handshake within {self.timeout} s"
        if frame is None or frame.type is not FrameType.DATA:
            return None, ""
        return frame, ""

    def done(self, ticket: int) -> None:
        """The channel's task ended (whatever happened): forget the ticket."""
        self.book.finish(ticket)
        self._waiting.pop(ticket, None)

    def _warn_flood(self, account: str) -> None:
        """One log line a minute per account while its pending channels are evicted."""
        now = trio.current_time()
        if now - self._warned.get(account, -FLOOD_WARN_INTERVAL) >= FLOOD_WARN_INTERVAL:
            self._warned[account] = now
            log.warning(
                "account %s keeps channels open without a handshake (%d pending, %d in all): "
                "closing its oldest to make room",
                account,
                self.book.count(account),
                len(self.book),
            )
