"""The limits' decisions and the byte-bounded send queue, without sockets."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from pio_remote.relay.connection import Connection, WireBytes
from pio_remote.relay.fairness import QueuePolice
from pio_remote.relay.limits import (
    ConnectionCaps,
    Limits,
    TokenBucket,
    channels_to_shed,
    hard_limit,
    queue_overdue,
)
from pio_remote.relay.metrics import Metrics
from pio_remote.relay.outbox import Gone, Outbox
from pio_remote.relay.router import AGENT, CLIENT, Opened, Router
from pio_remote.relay.websocket import ServerSocket
from pio_remote.wire import envelope
from pio_remote.wire.envelope import FrameType


def test_bucket_gives_the_burst_then_paces_at_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.1)  # in debt: wait 1/rate
    assert bucket.take(100.0) == pytest.approx(0.2)
    assert bucket.take(100.5) == 0.0  # 0.5 s refilled 5 tokens, 2 were owed
    assert bucket.take(200.0, 2) == 0.0  # refills up to the burst only
    assert bucket.take(200.0, 2) == pytest.approx(0.1)


def test_a_take_larger_than_the_burst_is_paced_not_refused() -> None:
    bucket = TokenBucket(rate=1000, burst=100, now=0.0)
    assert bucket.take(0.0, 1100) == pytest.approx(1.0)


@given(
    rate=st.floats(1, 1e6),
    burst=st.integers(1, 10**6),
    takes=st.lists(st.tuples(st.floats(0, 2), st.floats(0, 1e5)), max_size=50),
)
def test_bucket_never_lets_more_through_than_burst_plus_rate(
    rate: float, burst: int, takes: list[tuple[float, float]]
) -> None:
    """Whoever waits as told gets at most burst + rate * elapsed, at any time."""
    bucket = TokenBucket(rate, burst, 0.0)
    now = total = 0.0
    for gap, amount in takes:
        now += gap
        delay = bucket.take(now, amount)
        assert delay >= 0
        now += delay  # the caller waits as told, then uses what it took
        total += amount
        assert total <= burst + rate * now + 1e-6 * max(1.0, total)


def test_caps_per_ip_and_per_account_count_and_release() -> None:
    caps = ConnectionCaps(per_ip=2, per_account=1)
    assert caps.admit_ip("10.0.0.1") is None
    assert caps.admit_ip("10.0.0.1") is None
    refusal = caps.admit_ip("10.0.0.1")
    assert refusal is not None and refusal.status == 429 and refusal.drop == "ip_limit"
    assert "too many connections from 10.0.0.1 (at most 2)" in refusal.message
    assert "--max-connections-per-ip" in refusal.message
    assert caps.admit_ip("10.0.0.2") is None  # another address has its own count
    caps.release_ip("10.0.0.1")
    assert caps.admit_ip("10.0.0.1") is None
    assert caps.admit_account("alice") is None
    refusal = caps.admit_account("alice")
    assert refusal is not None and refusal.drop == "account_limit"
    assert "account 'alice' (at most 1)" in refusal.message
    caps.release_account("alice")
    assert caps.accounts == {}
    assert caps.admit_account("alice") is None


def test_a_cap_of_zero_means_no_cap() -> None:
    caps = ConnectionCaps(per_ip=0, per_account=0)
    for _ in range(5000):
        assert caps.admit_ip("127.0.0.1") is None
        assert caps.admit_account("alice") is None


def test_queue_is_overdue_only_after_a_whole_grace_period_over_its_bound() -> None:
    assert not queue_overdue(size=100, bound=100, over_since=1.0, now=50.0, grace=5)
    assert not queue_overdue(size=101, bound=100, over_since=None, now=50.0, grace=5)
    assert queue_overdue(size=101, bound=100, over_since=0.0, now=50.0, grace=5)
    assert not queue_overdue(size=101, bound=100, over_since=48.0, now=50.0, grace=5)
    assert queue_overdue(size=101, bound=100, over_since=45.0, now=50.0, grace=5)
    assert hard_limit(100) == 200


def test_shedding_closes_the_heaviest_channels_until_within_the_bound() -> None:
    queued = {1: 50, 2: 500, 3: 300, 4: 10}
    assert channels_to_shed(queued, size=870, bound=1000) == []
    assert channels_to_shed(queued, size=870, bound=400) == [2]
    assert channels_to_shed(queued, size=870, bound=70) == [2, 3]
    assert channels_to_shed(queued, size=870, bound=60) == [2, 3, 1]
    # Control frames (no channel) count in the size but cannot be shed.
    assert channels_to_shed(queued, size=1870, bound=60) == [2, 3, 1, 4]
    assert channels_to_shed({}, size=10**6, bound=10) == []


@given(st.dictionaries(st.integers(1, 100), st.integers(1, 10**6)), st.integers(0, 10**7))
def test_shedding_leaves_the_queue_within_its_bound_when_it_can(
    queued: dict[int, int], bound: int
) -> None:
    size = sum(queued.values())
    victims = channels_to_shed(queued, size, bound)
    left = size - sum(queued[c] for c in victims)
    assert left <= bound
    if victims:  # and it closes no more than it must
        assert left + queued[victims[-1]] > bound


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="send_queue_bytes"):
        Limits(send_queue_bytes=1000)
    with pytest.raises(ValueError, match="accept_burst"):
        Limits(accept_burst=0)
    with pytest.raises(ValueError, match="hello_timeout"):
        Limits(hello_timeout=0)
    with pytest.raises(ValueError, match="max_connections_per_ip must be at least 0"):
        Limits(max_connections_per_ip=-1)


# ---- the send queue (trio, no sockets) ------------------------------------------------------


def data(channel: int, size: int) -> bytes:
    return envelope.HEADER.pack(FrameType.DATA, channel) + bytes(size - envelope.HEADER_SIZE)


async def test_outbox_counts_bytes_and_drops_one_channel() -> None:
    box = Outbox(bound=100_000)
    frames = [data(1, 1000), data(2, 40_000), data(1, 500), WireBytes(b"\x8a\x00")]
    frames += [envelope.encode(FrameType.CLOSE, 2, b"bye")]
    for frame in frames:
        assert box.put(frame)
    assert box.size == sum(map(len, frames))
    assert box.by_channel() == {1: 1500, 2: 40_000}
    assert box.drop_channel(2) == 40_000
    assert box.by_channel() == {1: 1500}
    batch = await box.take(10**6)
    # Order kept; the CLOSE of channel 2 is not DATA and stays; the wire bytes stay.
    assert batch == [frames[0], frames[2], frames[3], frames[4]]
    assert box.size == 0


async def test_outbox_put_never_waits_but_put_own_waits_for_room() -> None:
    box = Outbox(bound=65536)
    for _ in range(10):  # far over the bound: put() takes it all
        assert box.put(data(1, 65536))
    assert box.size == 10 * 65536
    box.over_since = 1.0
    done = trio.Event()

    async def answer() -> None:
        await box.put_own(b"pong")
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()  # the peer reads nothing: its own answers wait
        await box.take(9 * 65536)
        assert box.size == 65536 and box.over_since == 1.0  # not yet below the bound
        await box.take(1)
        assert box.over_since is None
        await done.wait()
    assert await box.take(100) == [b"pong"]


async def test_outbox_writer_waits_for_frames_and_close_ends_everything() -> None:
    box = Outbox(bound=65536)
    got: list[list[bytes]] = []

    async def writer() -> None:
        try:
            while True:
                got.append(await box.take(1 << 20))
        except Gone:
            got.append([])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert box.idle
        box.put(b"one")
        assert not box.idle  # handed over, but the writer has not run yet
        await trio.testing.wait_all_tasks_blocked()
        box.close()
    assert got == [[b"one"], []]
    assert not box.put(b"late")
    with pytest.raises(Gone):
        await box.put_own(b"late")


# ---- shedding slow consumers (trio, no sockets) ---------------------------------------------


def ws() -> ServerSocket:
    return ServerSocket(envelope.MAX_FRAME_SIZE)


def pair(police: QueuePolice) -> tuple[Connection, Connection, int]:
    """An agent and a client with one channel between them; returns the agent-side id."""
    agt = Connection(AGENT, "alice", "h", None, "test", ws(), 65536)  # type: ignore[arg-type]
    agt.set_agent("lab", frozenset({"bob"}), "ab" * 32)
    police.router.add_agent(agt)
    cli = Connection(CLIENT, "bob", "h", None, "test", ws(), 65536)  # type: ignore[arg-type]
    police.router.add_client(cli)
    opened = police.router.open(cli, 7, "alice/lab")
    assert isinstance(opened, Opened)
    return agt, cli, opened.aid


def closes(box: Outbox) -> list[tuple[int, str]]:
    frames = [envelope.decode(f) for f in box._items if type(f) is bytes]
    return [(f.channel, f.text()) for f in frames if f.type is FrameType.CLOSE]


async def test_a_queue_past_twice_its_bound_loses_its_channel_at_once() -> None:
    metrics = Metrics()
    police = QueuePolice(Router(), metrics, Limits(send_queue_bytes=65536))
    agt, cli, aid = pair(police)
    for _ in range(3):  # 3 frames of 64 KiB: past 2 x 64 KiB
        police.queue(cli, data(7, 65536))
    assert cli.channels == {} and agt.channels == {}
    assert metrics.drops["slow_consumer"] == 1
    assert cli.outbox.by_channel() == {}
    assert closes(cli.outbox) == [
        (7, "slow_consumer: this client read too slowly: more than 0.125 MiB waited for it")
    ]
    assert closes(agt.outbox) == [(aid, "slow_consumer: client 'bob' read too slowly")]
    assert not cli.closing  # the connection itself stays


async def test_a_queue_over_its_bound_for_the_grace_period_is_shed(autojump_clock) -> None:
    metrics = Metrics()
    police = QueuePolice(Router(), metrics, Limits(send_queue_bytes=65536, slow_consumer_grace=5))
    agt, cli, aid = pair(police)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(police.run)
        police.queue(cli, data(7, 65536))
        police.queue(cli, data(7, 1000))  # over the bound, under twice it
        await trio.sleep(4)
        assert cli.channels and metrics.drops["slow_consumer"] == 0  # still in its grace
        await trio.sleep(2)
        assert not cli.channels and metrics.drops["slow_consumer"] == 1
        # A queue that drains in time is left alone.
        agt2, cli2, _ = pair(police)
        police.queue(cli2, data(7, 65536))
        police.queue(cli2, data(7, 1000))
        await trio.sleep(3)
        await cli2.outbox.take(1 << 20)
        await trio.sleep(10)
        assert cli2.channels and metrics.drops["slow_consumer"] == 1
        nursery.cancel_scope.cancel()


async def test_a_channel_its_peer_closed_keeps_its_last_frames() -> None:
    police = QueuePolice(Router(), Metrics(), Limits(send_queue_bytes=65536))
    agt, cli, aid = pair(police)
    police.queue(cli, data(7, 60000))
    police.router.close(agt, aid)  # the agent said its last and closed
    police.queue(cli, envelope.encode(FrameType.CLOSE, 7, b"done"))
    police.queue(cli, data(9, 65536))  # a frame of no open channel pushes it over
    police.queue(cli, data(9, 65536))
    assert cli.outbox.by_channel()[7] == 60000
    assert cli.closing  # nothing it could shed: the connection itself goes
