"""The agent's output ring, the resume check and the reconnect schedule: pure pieces."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pio_remote.net.retry import RETRY_FIRST, RETRY_MAX, backoff
from pio_remote.wire import serial_events as ev
from pio_remote.wire.resume import (
    OutputRing,
    Refused,
    Resumed,
    ResumeRequest,
    check_resume,
)

TOKEN = "t" * 32
ALICE, MALLORY = b"a" * 32, b"m" * 32


@given(
    capacity=st.integers(1, 64),
    chunks=st.lists(st.binary(max_size=40), max_size=30),
    offset=st.integers(0, 2000),
    limit=st.integers(0, 100),
)
def test_ring_keeps_the_newest_bytes_at_their_offsets(capacity, chunks, offset, limit):
    ring, stream = OutputRing(capacity), b""
    for chunk in chunks:
        overwritten = ring.append(chunk)
        stream += chunk
        assert len(ring) <= capacity
        assert overwritten >= 0
    assert ring.end == len(stream)
    assert ring.start == max(0, len(stream) - capacity)
    gap, data = ring.read_from(offset, limit)
    # What a client at ``offset`` gets: the gap, then the stream's bytes from there on.
    assert gap == max(0, ring.start - offset)
    first = max(offset, ring.start)
    assert data == stream[first : first + limit]


@given(chunks=st.lists(st.binary(min_size=1, max_size=50), max_size=40), step=st.integers(1, 64))
def test_a_reader_following_the_ring_sees_every_byte_once_or_a_counted_gap(chunks, step):
    ring, stream, received, missing, pos = OutputRing(48), b"", 0, 0, 0
    for chunk in chunks:
        ring.append(chunk)
        stream += chunk
        gap, data = ring.read_from(pos, step)
        missing += gap
        pos += gap
        assert data == stream[pos : pos + len(data)]  # the right bytes, in order
        received += len(data)
        pos += len(data)
    # Every byte is either received, counted as missing, or still to come: never twice.
    assert missing + received == pos <= len(stream)


def test_shrink_gives_bytes_back_and_counts_them_as_overwritten():
    ring = OutputRing(10)
    ring.append(b"0123456789")
    assert ring.shrink(4) == 6
    assert (ring.start, ring.end) == (6, 10)
    assert ring.read_from(0, 10) == (6, b"6789")
    with pytest.raises(ValueError):
        OutputRing(0)
    with pytest.raises(ValueError):
        ring.read_from(-1, 1)


def test_only_the_key_that_opened_the_monitor_may_resume_it():
    ring = OutputRing(8)
    ring.append(b"0123456789ab")  # 4 bytes overwritten
    ok = check_resume(ALICE, TOKEN, ALICE, ResumeRequest(TOKEN, 2), ring)
    assert ok == Resumed(offset=4, missing=2)
    assert check_resume(ALICE, TOKEN, ALICE, ResumeRequest(TOKEN, 12), ring) == Resumed(12, 0)
    # The attacker's moves: the right token from another key, a guessed token, a future offset.
    stolen = check_resume(ALICE, TOKEN, MALLORY, ResumeRequest(TOKEN, 4), ring)
    assert isinstance(stolen, Refused) and "another client key" in stolen.message
    guessed = check_resume(ALICE, TOKEN, ALICE, ResumeRequest("x" * 32, 4), ring)
    assert isinstance(guessed, Refused)
    assert isinstance(check_resume(ALICE, TOKEN, ALICE, ResumeRequest(TOKEN, 13), ring), Refused)


@given(st.one_of(st.none(), st.integers(), st.text(), st.dictionaries(st.text(), st.integers())))
def test_a_malformed_resume_request_is_a_value_error(raw):
    with pytest.raises(ValueError):
        ResumeRequest.from_dict(raw)


def test_resume_request_round_trips_and_bounds_its_fields():
    assert ResumeRequest.from_dict(ResumeRequest(TOKEN, 7).to_dict()) == ResumeRequest(TOKEN, 7)
    for bad in ({"token": TOKEN, "offset": -1}, {"token": TOKEN, "offset": True}, {"token": "s"}):
        with pytest.raises(ValueError):
            ResumeRequest.from_dict(bad)


def test_opened_carries_the_resume_fields_and_old_agents_parse_without_them():
    body = ev.opened(
        "/dev/x", ev.SerialSettings(), token=TOKEN, offset=5, continued=True, missing=3
    )
    notice = ev.parse_notice(body)
    assert isinstance(notice, ev.Opened)
    assert (notice.token, notice.offset, notice.continued, notice.missing) == (TOKEN, 5, True, 3)
    plain = ev.parse_notice({"event": "opened", "port": "/dev/x", "settings": {}})
    assert isinstance(plain, ev.Opened) and (plain.token, plain.offset) == ("", 0)
    bad = ev.parse_notice({**body, "offset": -5})
    assert isinstance(bad, ev.AgentWarning)


@given(attempt=st.integers(0, 1000), rand=st.floats(0, 1, exclude_max=True))
def test_backoff_is_capped_so_a_returning_path_is_tried_within_a_second(attempt, rand):
    delay = backoff(attempt, rand)
    assert RETRY_FIRST / 2 <= delay <= RETRY_MAX
    assert delay <= RETRY_FIRST * 2**attempt


def test_backoff_doubles_from_the_first_retry():
    assert backoff(0, 0.999) < backoff(1, 0.999) < backoff(2, 0.999) <= RETRY_MAX
