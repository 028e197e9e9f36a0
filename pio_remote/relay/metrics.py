"""Relay counters, exposed through prometheus_client's types and text exposition.

The forwarding path bumps plain integer attributes inline: no locks (trio is
single-threaded) and no per-frame allocation. prometheus_client reads them
only when /metrics is scraped, through a collector on a registry of this
relay's own (so two relays in one process never share series).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Drop reasons known up front, so each appears (as 0) before the first drop and
# dashboards see a stable set of series.
DROP_REASONS = (
    "auth",
    "malformed",
    "oversized",
    "unknown_channel",
    "not_reachable",
    "ambiguous",
    "bad_ref",
    "channel_limit",
    "peer_gone",
    "version",
    "hello_timeout",
    "idle_timeout",
    "write_stall",
    "slow_consumer",
    "ip_limit",
    "account_limit",
    "name_taken",
    "auth_throttled",
    "accept_limit",
    "pending_limit",
    "head_timeout",
)


class Metrics:
    """Everything /metrics reports; gauges are read from the router on render."""

    __slots__ = (
        "frames_in",
        "frames_out",
        "bytes_in",
        "bytes_out",
        "drops",
        "connections_total",
        "http_requests",
        "accept_throttled",
        "rate_limited",
    )

    def __init__(self) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.drops: Counter[str] = Counter({reason: 0 for reason in DROP_REASONS})
        self.connections_total = 0
        self.http_requests = 0
        self.accept_throttled = 0  # times the accept loop paused for the accept limiter
        self.rate_limited = 0  # times a connection's reader paused for its rate limit

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] += n

    def render(self, connections: dict[str, int], agents_online: int) -> bytes:
        """The /metrics body."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(lambda: self._families(connections, agents_online)))
        return generate_latest(registry)

    def _families(self, connections: dict[str, int], agents_online: int) -> Iterator[Metric]:
        conns = GaugeMetricFamily(
            "relay_connections", "Open WebSocket connections by role.", labels=["role"]
        )
        for role in sorted(connections):
            conns.add_metric([role], connections[role])
        yield conns
        yield GaugeMetricFamily(
            "relay_agents_online",
            "Agents that completed HELLO and are reachable.",
            value=agents_online,
        )
        yield CounterMetricFamily(
            "relay_connections_accepted",
            "WebSocket connections accepted.",
            value=self.connections_total,
        )
        frames = CounterMetricFamily(
            "relay_frames", "Envelope frames received (in) and sent (out).", labels=["direction"]
        )
        frames.add_metric(["in"], self.frames_in)
        frames.add_metric(["out"], self.frames_out)
        yield frames
        size = CounterMetricFamily(
            "relay_bytes", "Envelope bytes received (in) and sent (out).", labels=["direction"]
        )
        size.add_metric(["in"], self.bytes_in)
        size.add_metric(["out"], self.bytes_out)
        yield size
        drops = CounterMetricFamily(
            "relay_drops",
            "Frames, connections or requests refused, by reason.",
            labels=["reason"],
        )
        for reason in sorted(self.drops):
            drops.add_metric([reason], self.drops[reason])
        yield drops
        yield CounterMetricFamily(
            "relay_http_requests", "Plain HTTP requests answered.", value=self.http_requests
        )
        yield CounterMetricFamily(
            "relay_accept_throttled",
            "Pauses of the accept loop for --accept-rate.",
            value=self.accept_throttled,
        )
        yield CounterMetricFamily(
            "relay_rate_limited",
            "Pauses of a connection's reader for --rate.",
            value=self.rate_limited,
        )


class _Snapshot(Collector):
    """A collector that yields the families a function builds at scrape time."""

    def __init__(self, build: Callable[[], Iterator[Metric]]) -> None:
        self._build = build

    def collect(self) -> Iterator[Metric]:
        return self._build()
