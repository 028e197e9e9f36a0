"""Relay counters, rendered in the Prometheus text exposition format.

Plain integer attributes, bumped inline on the forwarding path: no locks (trio
is single-threaded), no per-frame allocation, no client library.
"""

from __future__ import annotations

from collections import Counter

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
        lines = [
            "# HELP relay_connections Open WebSocket connections by role.",
            "# TYPE relay_connections gauge",
        ]
        for role in sorted(connections):
            lines.append(f'relay_connections{{role="{role}"}} {connections[role]}')
        lines += [
            "# HELP relay_agents_online Agents that completed HELLO and are reachable.",
            "# TYPE relay_agents_online gauge",
            f"relay_agents_online {agents_online}",
            "# HELP relay_connections_accepted_total WebSocket connections accepted.",
            "# TYPE relay_connections_accepted_total counter",
            f"relay_connections_accepted_total {self.connections_total}",
            "# HELP relay_frames_total Envelope frames received (in) and sent (out).",
            "# TYPE relay_frames_total counter",
            f'relay_frames_total{{direction="in"}} {self.frames_in}',
            f'relay_frames_total{{direction="out"}} {self.frames_out}',
            "# HELP relay_bytes_total Envelope bytes received (in) and sent (out).",
            "# TYPE relay_bytes_total counter",
            f'relay_bytes_total{{direction="in"}} {self.bytes_in}',
            f'relay_bytes_total{{direction="out"}} {self.bytes_out}',
            "# HELP relay_drops_total Frames, connections or requests refused, by reason.",
            "# TYPE relay_drops_total counter",
        ]
        for reason in sorted(self.drops):
            lines.append(f'relay_drops_total{{reason="{reason}"}} {self.drops[reason]}')
        lines += [
            "# HELP relay_http_requests_total Plain HTTP requests answered.",
            "# TYPE relay_http_requests_total counter",
            f"relay_http_requests_total {self.http_requests}",
            "# HELP relay_accept_throttled_total Pauses of the accept loop for --accept-rate.",
            "# TYPE relay_accept_throttled_total counter",
            f"relay_accept_throttled_total {self.accept_throttled}",
            "# HELP relay_rate_limited_total Pauses of a connection's reader for --rate.",
            "# TYPE relay_rate_limited_total counter",
            f"relay_rate_limited_total {self.rate_limited}",
        ]
        return ("\n".join(lines) + "\n").encode()
