"""When the relay collects in full: on connection churn, not on every allocation burst."""

from __future__ import annotations

import gc

import trio

from pio_remote.relay import gcfreeze
from pio_remote.relay.gcfreeze import FULL_COLLECT_S, MIN_ENDED, FreezePolicy


def test_idle_connections_never_trigger_a_full_collection():
    policy = FreezePolicy()
    policy.collected(live=10_000, ended=0, now=0.0)
    assert not policy.should_collect(ended=0, now=FULL_COLLECT_S - 1)
    assert not policy.should_collect(ended=2_499, now=1.0)  # under a quarter of 10,000


def test_a_quarter_of_the_frozen_connections_gone_triggers_one():
    policy = FreezePolicy()
    policy.collected(live=10_000, ended=100, now=0.0)
    assert policy.should_collect(ended=2_600, now=1.0)
    policy.collected(live=7_600, ended=2_600, now=1.0)
    assert not policy.should_collect(ended=2_601, now=2.0)


def test_a_small_relay_collects_after_a_few_dozen_and_at_least_every_ten_minutes():
    policy = FreezePolicy()
    policy.collected(live=3, ended=0, now=0.0)
    assert not policy.should_collect(ended=MIN_ENDED - 1, now=1.0)
    assert policy.should_collect(ended=MIN_ENDED, now=1.0)
    assert policy.should_collect(ended=0, now=FULL_COLLECT_S)


async def test_the_relay_task_freezes_what_is_alive(autojump_clock):
    gc.unfreeze()
    live = [object() for _ in range(10)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gcfreeze.keep_frozen, lambda: len(live), lambda: 0)
        await trio.sleep(gcfreeze.FREEZE_INTERVAL_S * 2.5)
        assert gc.get_freeze_count() > 0
        nursery.cancel_scope.cancel()
    gc.unfreeze()
