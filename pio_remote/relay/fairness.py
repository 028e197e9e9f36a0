"""One slow reader never stalls anyone else: queue without waiting, shed what is stuck.

The reader of a connection puts each frame on its target's ``Outbox`` and goes
on; it never waits for one destination. A queue over its byte bound starts a
grace period; if it is still over when the period ends (or goes past twice
the bound at any time), its heaviest channels are closed with the reason
``slow_consumer``: CLOSE to both ends, and a count in the drop metrics. The
rest of that peer's channels, and everybody else, carry on. DERP drops
packets from the queue head for the same reason; a Noise session cannot lose a
frame, so here the unit dropped is the channel.
"""

from __future__ import annotations

import logging

import trio

from pio_remote.relay.connection import CLOSE_TIMED_OUT, Connection
from pio_remote.relay.limits import Limits, channels_to_shed, hard_limit, queue_overdue
from pio_remote.relay.metrics import Metrics
from pio_remote.relay.router import AGENT, Router
from pio_remote.wire import envelope
from pio_remote.wire.envelope import FrameType

log = logging.getLogger("relay")

MiB = 1024 * 1024


class QueuePolice:
    """Watches the send queues that are over their bound, and sheds the stuck ones."""

    def __init__(self, router: Router, metrics: Metrics, limits: Limits) -> None:
        self.router = router
        self.metrics = metrics
        self.grace = limits.slow_consumer_grace
        self.over: set[Connection] = set()
        self._wake = trio.Event()

    def queue(self, target: Connection, frame: bytes) -> None:
        """Queue ``frame`` for ``target`` without waiting; shed if its queue is too big."""
        outbox = target.outbox
        if not outbox.put(frame):
            self.metrics.drop("peer_gone")
        elif outbox.size > outbox.bound:
            self.overfull(target)

    def overfull(self, target: Connection) -> None:
        """``target``'s queue just went over its bound: start the clock, or shed now."""
        outbox = target.outbox
        if outbox.size > hard_limit(outbox.bound):
            self.shed(target, f"more than {hard_limit(outbox.bound) / MiB:g} MiB waited for it")
            return
        if outbox.over_since is None:
            outbox.over_since = trio.current_time()
        if target not in self.over:
            self.over.add(target)
            self._wake.set()

    async def run(self) -> None:
        """Check the over-full queues a few times per grace period."""
        while True:
            if not self.over:
                self._wake = trio.Event()
                await self._wake.wait()
            await trio.sleep(max(self.grace / 5, 0.01))
            now = trio.current_time()
            for conn in list(self.over):
                outbox = conn.outbox
                if outbox.closed or outbox.size <= outbox.bound:
                    self.over.discard(conn)
                elif queue_overdue(outbox.size, outbox.bound, outbox.over_since, now, self.grace):
                    self.over.discard(conn)
                    self.shed(
                        conn,
                        f"more than {outbox.bound / MiB:g} MiB waited for it for {self.grace:g} s",
                    )

    def shed(self, conn: Connection, why: str) -> None:
        """Close ``conn``'s heaviest channels until its queue is within its bound."""
        outbox = conn.outbox
        # Only open channels: one its peer closed still owes the reader its last frames.
        queued = {ch: n for ch, n in outbox.by_channel().items() if ch in conn.channels}
        for channel in channels_to_shed(queued, outbox.size, outbox.bound):
            outbox.drop_channel(channel)
            other, other_channel = self.router.close(conn, channel)  # type: ignore[misc]
            self.metrics.drop("slow_consumer")
            who = f"agent '{conn.ref}'" if conn.role == AGENT else f"client '{conn.account}'"
            log.info("%r: slow_consumer: closing channel %d (%s)", conn, channel, why)
            mine = f"slow_consumer: this {conn.role} read too slowly: {why}"
            theirs = f"slow_consumer: {who} read too slowly"
            outbox.put(envelope.encode(FrameType.CLOSE, channel, mine.encode()))
            notice = envelope.encode(FrameType.CLOSE, other_channel, theirs.encode())
            self.queue(other, notice)  # type: ignore[arg-type]
        if outbox.size > hard_limit(outbox.bound):
            # Only frames of no channel are left (a CLOSE flood, say): the peer reads nothing.
            self.metrics.drop("slow_consumer")
            conn.kill(
                "slow_consumer",
                f"this connection read too slowly: {why}",
                CLOSE_TIMED_OUT,
            )
