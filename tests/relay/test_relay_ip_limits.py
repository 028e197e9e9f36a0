"""The per-address limits of limits.py as plain values: no sockets, no clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pio_remote.relay.limits import AuthThrottle, PendingHeads, PerIpBuckets, ip_key


def test_ip_key_groups_an_ipv6_64_and_unmaps_ipv4() -> None:
    assert ip_key("192.0.2.7") == "192.0.2.7"
    assert ip_key("2001:db8:1:2:aaaa::1") == ip_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert ip_key("2001:db8:1:3::1") != ip_key("2001:db8:1:2::1")
    assert ip_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert ip_key("fe80::1%eth0") == "fe80::/64"
    assert ip_key("?") == "?"


def test_one_address_over_its_rate_leaves_the_others_alone() -> None:
    buckets = PerIpBuckets(rate=10, burst=3)
    assert [buckets.admit("a", 0.0) for _ in range(5)] == [True, True, True, False, False]
    assert buckets.admit("b", 0.0)  # another address has its own bucket
    assert not buckets.admit("a", 0.05)
    assert buckets.admit("a", 0.1)  # refills at the rate; refusals cost nothing


@given(st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200))
def test_admitted_never_exceed_burst_plus_rate_times_time(gaps: list[float]) -> None:
    buckets = PerIpBuckets(rate=20, burst=5)
    now = admitted = 0.0
    for gap in gaps:
        now += gap
        admitted += buckets.admit("a", now)
    assert admitted <= 5 + 20 * now + 1e-9


def test_full_buckets_are_forgotten() -> None:
    buckets = PerIpBuckets(rate=10, burst=2)
    buckets.admit("a", 0.0)
    buckets.admit("b", 0.0)
    buckets.admit("b", 0.0)
    buckets.prune(0.15)  # a refilled, b has not
    assert set(buckets.buckets) == {"b"}


def test_zero_rate_is_no_limit() -> None:
    buckets = PerIpBuckets(rate=0, burst=1)
    assert all(buckets.admit("a", 0.0) for _ in range(1000)) and not buckets.buckets


def test_pending_heads_cap_per_address() -> None:
    pending = PendingHeads(cap=2)
    assert [pending.admit("a"), pending.admit("a"), pending.admit("a")] == [True, True, False]
    assert pending.admit("b")
    pending.release("a")
    assert pending.admit("a")


def test_failed_tokens_block_an_address_for_the_rest_of_its_window() -> None:
    throttle = AuthThrottle(max_failures=3, window=60)
    for t in range(3):
        assert throttle.blocked("a", t) == 0
        throttle.failed("a", t)
    assert throttle.blocked("a", 10) == 50
    assert throttle.blocked("b", 10) == 0  # others are not blocked
    assert throttle.blocked("a", 60) == 0  # the window is over


def test_the_summary_is_one_line_with_counts_then_starts_over() -> None:
    throttle = AuthThrottle(max_failures=2, window=60)
    for _ in range(2):
        throttle.failed("10.0.0.9", 0)
    for _ in range(1000):
        throttle.blocked("10.0.0.9", 1)
    throttle.failed("10.0.0.1", 1)
    line = throttle.summary(2)
    assert line == (
        "refused 3 bad or missing tokens and 1000 connections of throttled addresses: "
        "10.0.0.9 2 (+1000 refused unread: too many failures), 10.0.0.1 1"
    )
    assert throttle.summary(3) is None
    assert throttle.blocked("10.0.0.9", 4) > 0  # the summary does not lift the block


def test_the_summary_names_at_most_five_addresses() -> None:
    throttle = AuthThrottle(max_failures=0, window=60)
    for n in range(9):
        throttle.failed(f"10.0.0.{n}", 0)
    line = throttle.summary(1)
    assert line is not None and line.endswith("4 more addresses") and line.count("10.0.0.") == 5
    assert not throttle.windows  # 0: no limit, nothing kept per address
