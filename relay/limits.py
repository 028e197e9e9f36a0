"""The relay's limits, and the decisions they lead to, as plain values.

No I/O here: the trio shell (``server.py``, ``session.py``) asks and applies the
answer, so each rule is tested without a socket. The limits follow Tailscale's
DERP server, which added an accept limiter and per-client caps after connection
floods caused out-of-memory kills (tailscale issue #3908), and bounds each
client's send queue, dropping for a client that does not keep up.

- **Accept limiter**: a token bucket of new TCP connections per second, with a
  burst. Over the rate the relay stops accepting for a moment; new connections
  wait in the kernel's listen backlog, so nobody is refused for a burst.
- **Connection caps** per source IP and per account: a flood from one place or
  one token cannot take every file descriptor. Over a cap: HTTP 429.
- **Per-connection rate** (optional): a token bucket of bytes per second read
  from one connection; over it, the relay reads that connection more slowly.
- **Send queue** per connection, bounded in bytes. Forwarding never waits for
  room (one slow reader must not stall whoever sends to it). The session layer's
  credits bound what an honest peer has in flight, so a queue that stays over
  its bound for ``slow_consumer_grace`` belongs to a consumer slower than its own
  window: its heaviest channels are closed (``slow_consumer``), and only those.
  Past twice the bound they are closed at once, which bounds the memory.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024

# A queue this many times its bound is shed at once, without a grace period.
# The bound is what a peer may use for a while; this is what it may ever use.
HARD_LIMIT_FACTOR = 2


@dataclass(frozen=True, slots=True)
class Limits:
    """Every limit of a running relay; ``relay serve`` has one option per field."""

    # New TCP connections per second, and how many may come at once (0: no limit).
    # 200/s lets 10,000 agents reconnect after a restart in under a minute.
    accept_rate: float = 200.0
    accept_burst: int = 1000
    # Open connections per source IP and per account (0: no limit). Generous:
    # a lab behind one NAT, or one account with a board farm, is normal.
    max_connections_per_ip: int = 1000
    max_connections_per_account: int = 1000
    # Bytes per second read from one connection, and its burst (0: no limit).
    rate: float = 0.0
    rate_burst: int = 4 * MiB
    # A connection's send queue, in bytes: four session windows (1 MiB each).
    send_queue_bytes: int = 4 * MiB
    # Seconds a send queue may stay over its bound before channels are closed.
    slow_consumer_grace: float = 5.0
    # Seconds a new connection has to say HELLO.
    hello_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("accept_rate", "rate", "slow_consumer_grace"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("accept_burst", "rate_burst"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_connections_per_ip < 0 or self.max_connections_per_account < 0:
            raise ValueError("connection caps must not be negative (0: no limit)")
        if self.send_queue_bytes < 64 * 1024:
            raise ValueError("send_queue_bytes must be at least 65536 (one frame)")
        if self.hello_timeout <= 0:
            raise ValueError("hello_timeout must be positive")


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up.

    ``take`` always takes, going into debt if it must, and says how long the
    caller should wait before going on: a read bigger than the burst is then
    paced, never refused.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float, amount: float = 1.0) -> float:
        """Take ``amount``; seconds to wait before using it (0.0: go on now)."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= amount
        if self.tokens >= 0:
            return 0.0
        return -self.tokens / self.rate


@dataclass(frozen=True, slots=True)
class Refusal:
    """Answer HTTP ``status`` with ``message``; count ``drop`` in the metrics."""

    status: int
    message: str
    drop: str


class ConnectionCaps:
    """Open connections per source IP and per account, against their caps."""

    def __init__(self, per_ip: int, per_account: int) -> None:
        self.per_ip = per_ip
        self.per_account = per_account
        self.ips: dict[str, int] = {}
        self.accounts: dict[str, int] = {}

    def admit_ip(self, ip: str) -> Refusal | None:
        """Count a new TCP connection from ``ip``, or say why not."""
        if not _admit(self.ips, ip, self.per_ip):
            return Refusal(
                429,
                f"too many connections from {ip} (at most {self.per_ip}): close some, "
                "or ask the relay admin to raise --max-connections-per-ip",
                "ip_limit",
            )
        return None

    def admit_account(self, account: str) -> Refusal | None:
        """Count a new WebSocket of ``account``, or say why not."""
        if not _admit(self.accounts, account, self.per_account):
            return Refusal(
                429,
                f"too many connections for account '{account}' (at most "
                f"{self.per_account}): stop some agents or clients, or ask the relay "
                "admin to raise --max-connections-per-account",
                "account_limit",
            )
        return None

    def release_ip(self, ip: str) -> None:
        _release(self.ips, ip)

    def release_account(self, account: str) -> None:
        _release(self.accounts, account)


def _admit(counts: dict[str, int], key: str, cap: int) -> bool:
    n = counts.get(key, 0)
    if cap and n >= cap:
        return False
    counts[key] = n + 1
    return True


def _release(counts: dict[str, int], key: str) -> None:
    n = counts[key] - 1
    if n:
        counts[key] = n
    else:
        del counts[key]


def hard_limit(bound: int) -> int:
    """Queue size at which channels are closed at once."""
    return bound * HARD_LIMIT_FACTOR


def queue_overdue(
    size: int, bound: int, over_since: float | None, now: float, grace: float
) -> bool:
    """True when a queue has been over its bound for the whole grace period."""
    return size > bound and over_since is not None and now - over_since >= grace


def channels_to_shed(queued: dict[int, int], size: int, bound: int) -> list[int]:
    """Channels to close, heaviest first, until the queue is back within its bound.

    ``queued`` maps each channel to its bytes in the queue; ``size`` is the whole
    queue, which also holds frames of no channel (control frames).
    """
    victims = []
    for channel, nbytes in sorted(queued.items(), key=lambda item: (-item[1], item[0])):
        if size <= bound:
            break
        victims.append(channel)
        size -= nbytes
    return victims
