"""Keeping the relay's long-lived objects out of full garbage collections.

A relay holds thousands of idle connections, each a few dozen objects the
collector tracks (tasks, scopes, the protocol object, queues). Python's full
collection walks all of them, and one walk over 10,000 idle agents stalled
every active session for tens of milliseconds (issue 17: p99 66 ms beside
5.8 ms without them). So the relay moves what is alive into the permanent
generation (``gc.freeze()``) after start-up and then once a second: cheap (a
list splice), and the collector then only walks what is young.

What freezing costs: a frozen object that later becomes cyclic garbage is not
collected until the next ``gc.unfreeze()``. Connections are the relay's churn,
so ``FreezePolicy`` unfreezes and collects in full once a quarter as many
connections as were frozen have ended since (they may have left such cycles),
and at least every ``FULL_COLLECT_S`` whatever happened: the same walk as
before, but only as often as the population actually changes.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass

import trio

FREEZE_INTERVAL_S = 1.0
FULL_COLLECT_S = 600.0
# Connections that may end between full collections, at least (a small relay).
MIN_ENDED = 64


@dataclass
class FreezePolicy:
    """When to collect in full: pure bookkeeping, fed the relay's connection counts."""

    frozen_live: int = 0  # connections alive at the last full collection
    ended_at_collect: int = 0
    collected_at: float = 0.0

    def should_collect(self, ended: int, now: float) -> bool:
        churn = ended - self.ended_at_collect
        return churn >= max(MIN_ENDED, self.frozen_live // 4) or (
            now - self.collected_at >= FULL_COLLECT_S
        )

    def collected(self, live: int, ended: int, now: float) -> None:
        self.frozen_live = live
        self.ended_at_collect = ended
        self.collected_at = now


async def keep_frozen(live: Callable[[], int], ended: Callable[[], int]) -> None:
    """Freeze once a second; collect in full when the policy says so.

    ``live`` and ``ended`` give the live connection count and the number of
    connections ended so far.
    """
    policy = FreezePolicy(collected_at=trio.current_time())
    gc.collect()
    gc.freeze()  # start-up: modules, the account table, the listeners
    policy.collected(live(), ended(), trio.current_time())
    while True:
        await trio.sleep(FREEZE_INTERVAL_S)
        now = trio.current_time()
        if policy.should_collect(ended(), now):
            gc.unfreeze()
            gc.collect()
            policy.collected(live(), ended(), now)
        gc.freeze()
