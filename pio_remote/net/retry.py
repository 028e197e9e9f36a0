"""One reconnect schedule for everything that reconnects (agent, monitor, forward).

Short and capped: a path usually comes back after a relay restart or a network
blip, and the first try after its return should land within about a second,
not after a doubling backoff grown to many seconds. The jitter spreads a crowd
of agents over that second instead of sending them all at once.
"""

from __future__ import annotations

import random

RETRY_FIRST = 0.25
RETRY_MAX = 1.0


def backoff(attempt: int, rand: float | None = None) -> float:
    """Seconds before reconnect attempt ``attempt`` (0-based): doubling, capped, jittered.

    ``rand`` in [0, 1) replaces the random draw (tests).
    """
    draw = random.random() if rand is None else rand
    base = min(RETRY_MAX, RETRY_FIRST * 2 ** min(attempt, 16))
    return base * (0.5 + 0.5 * draw)
