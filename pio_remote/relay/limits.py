"""The relay's limits, and the decisions they lead to, as plain values.

No I/O here: the trio shell (``server.py``, ``session.py``) asks and applies the
answer, so each rule is tested without a socket. The limits follow Tailscale's
DERP server, which added an accept limiter and per-client caps after connection
floods caused out-of-memory kills (tailscale issue #3908), and bounds each
client's send queue, dropping for a client that does not keep up.

- **Accept limiter per IP**: a token bucket of new TCP connections per second
  for each source address (an IPv6 /64 counts as one). Over it, that address's
  new connection is closed at once, so one address flooding the relay never
  fills the listen backlog in front of everyone else.
- **Accept ceiling**: a token bucket of admitted connections per second, for the
  machine's sake. Over it the relay stops accepting for a moment; new
  connections wait in the kernel's listen backlog. One address gets at most its
  own rate of it.
- **Before the request head**: at most ``max_pending_per_ip`` connections of
  one address may be waiting to send their request head (an honest client sends
  it in its first packet), each for at most ``head_timeout``. More: closed at
  once, without reading.
- **Connection caps** per source IP and per account: a flood from one place or
  one token cannot take every file descriptor. Over a cap: HTTP 429.
- **Failed tokens per IP**: after ``auth_failures_per_ip`` refused tokens in
  ``auth_failure_window`` seconds, that address is answered 429 at once (its
  tokens are not even looked up) until the window ends. Refusals are logged
  as one summary line per interval, never one line each.
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

import ipaddress
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

MiB = 1024 * 1024

# A queue this many times its bound is shed at once, without a grace period.
# The bound is what a peer may use for a while; this is what it may ever use.
HARD_LIMIT_FACTOR = 2


def _limit(default: float, least: float, unit: str, text: str, *, above: bool = False) -> Any:
    """A field of ``Limits``: its default, its least value (``above``: it must exceed it),
    its unit (``seconds``, ``bytes``, ``bytes/s``, ``count``, ``per second``) and its
    help text, from which ``relay serve`` makes its option (cli/relay_cmds.py)."""
    meta = {"least": least, "above": above, "unit": unit, "help": text}
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class Limits:
    """Every limit of a running relay; ``relay serve`` has one option per field."""

    # 200/s lets 10,000 agents reconnect after a restart in under a minute.
    accept_rate: float = _limit(
        200.0,
        0,
        "per second",
        "New connections accepted per second, after --accept-burst; more wait in the "
        "listen backlog (0: no limit).",
    )
    accept_burst: int = _limit(
        1000, 1, "count", "New connections accepted at once before --accept-rate applies."
    )
    # A lab of 100 agents behind one NAT reconnects within the burst.
    accept_rate_per_ip: float = _limit(
        20.0,
        0,
        "per second",
        "New connections accepted per second from one address (an IPv6 /64 is one), "
        "after --accept-burst-per-ip; more are closed at once (0: no limit).",
    )
    accept_burst_per_ip: int = _limit(
        200,
        1,
        "count",
        "New connections one address may open at once before --accept-rate-per-ip applies.",
    )
    max_pending_per_ip: int = _limit(
        32,
        0,
        "count",
        "Connections of one address that have not sent their request head yet; more are "
        "closed at once (0: no limit).",
    )
    head_timeout: float = _limit(
        10.0,
        0,
        "seconds",
        "Seconds a new connection has to send its request head (TLS handshake included).",
        above=True,
    )
    # Tokens are 256-bit: this bounds the noise, not the odds.
    auth_failures_per_ip: int = _limit(
        20,
        0,
        "count",
        "Refused tokens from one address within --auth-failure-window; after that, its "
        "connections get HTTP 429 unread until the window ends (0: no limit).",
    )
    auth_failure_window: float = _limit(
        60.0, 0, "seconds", "Seconds over which --auth-failures-per-ip counts.", above=True
    )
    # Generous: a lab behind one NAT, or one account with a board farm, is normal.
    max_connections_per_ip: int = _limit(
        1000, 0, "count", "Open connections from one IP address; more get HTTP 429 (0: no limit)."
    )
    max_connections_per_account: int = _limit(
        1000,
        0,
        "count",
        "Open agent and client connections of one account; more get HTTP 429 (0: no limit).",
    )
    rate: float = _limit(
        0.0, 0, "bytes/s", "Bytes per second read from one connection, e.g. 10MB (0: no limit)."
    )
    rate_burst: int = _limit(
        4 * MiB, 1, "bytes", "Bytes one connection may send at once before --rate applies."
    )
    # Four session windows (1 MiB each); at least one frame.
    send_queue_bytes: int = _limit(
        4 * MiB,
        64 * 1024,
        "bytes",
        "Bytes queued towards one connection; a queue over it for --slow-consumer-grace "
        "loses its busiest channels (slow_consumer).",
    )
    slow_consumer_grace: float = _limit(
        5.0, 0, "seconds", "Seconds a send queue may stay over --send-queue-bytes."
    )
    hello_timeout: float = _limit(
        10.0, 0, "seconds", "Seconds a new connection has to say HELLO.", above=True
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value, least, above = getattr(self, f.name), f.metadata["least"], f.metadata["above"]
            if value < least or (above and value == least):
                raise ValueError(f"{f.name} must be {'more than' if above else 'at least'} {least}")


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


def ip_key(ip: str) -> str:
    """The address a per-IP limit counts: an IPv6 address by its /64 (one host's
    usual allocation, so a host cannot dodge a limit by rotating addresses)."""
    if ":" not in ip:
        return ip
    try:
        address = ipaddress.IPv6Address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network(f"{address}/64", strict=False))


# Addresses a per-IP table keeps before it forgets idle ones; bounds its memory
# when many addresses each connect once.
MAX_TRACKED_IPS = 100_000


class PerIpBuckets:
    """One TokenBucket per address; ``admit`` says whether a new connection may go on.

    A bucket that has refilled is the same as no bucket: ``prune`` drops those,
    so the table holds only addresses that connected within ``burst / rate`` s.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.buckets: dict[str, TokenBucket] = {}

    def admit(self, ip: str, now: float) -> bool:
        if not self.rate:
            return True
        bucket = self.buckets.get(ip)
        if bucket is None:
            if len(self.buckets) >= MAX_TRACKED_IPS:
                self.prune(now)
            bucket = self.buckets[ip] = TokenBucket(self.rate, self.burst, now)
        bucket.tokens = min(bucket.burst, bucket.tokens + (now - bucket.stamp) * bucket.rate)
        bucket.stamp = now
        if bucket.tokens < 1:
            return False  # refused connections take no token: the bucket refills
        bucket.tokens -= 1
        return True

    def prune(self, now: float) -> None:
        full = [
            ip for ip, b in self.buckets.items() if b.tokens + (now - b.stamp) * b.rate >= b.burst
        ]
        for ip in full:
            del self.buckets[ip]


class PendingHeads:
    """Connections per address that have not sent their request head yet."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.counts: dict[str, int] = {}

    def admit(self, ip: str) -> bool:
        return _admit(self.counts, ip, self.cap)

    def release(self, ip: str) -> None:
        _release(self.counts, ip)


@dataclass
class _Failures:
    since: float  # start of this address's window
    count: int = 0


class AuthThrottle:
    """Refused tokens per address in a fixed window, and the log summary of them.

    ``blocked`` says how long an address must wait (0: go on); ``failed``
    counts a refusal; ``summary`` gives one log line for everything since the
    last call (None when nothing was refused) and forgets expired windows.
    """

    def __init__(self, max_failures: int, window: float) -> None:
        self.max_failures = max_failures
        self.window = window
        self.windows: dict[str, _Failures] = {}
        # Since the last summary: refusals and fast refusals per address.
        self.refused: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()

    def blocked(self, ip: str, now: float) -> float:
        entry = self.windows.get(ip)
        if not self.max_failures or entry is None or now - entry.since >= self.window:
            return 0.0
        if entry.count < self.max_failures:
            return 0.0
        self.throttled[ip] += 1
        return entry.since + self.window - now

    def failed(self, ip: str, now: float) -> None:
        self.refused[ip] += 1
        if not self.max_failures:
            return
        entry = self.windows.get(ip)
        if entry is None or now - entry.since >= self.window:
            if entry is None and len(self.windows) >= MAX_TRACKED_IPS:
                self._forget(now)
            entry = self.windows[ip] = _Failures(now)
        entry.count += 1

    def summary(self, now: float, top: int = 5) -> str | None:
        self._forget(now)
        if not self.refused and not self.throttled:
            return None
        refused, throttled = self.refused, self.throttled
        self.refused, self.throttled = Counter(), Counter()
        ips = sorted(set(refused) | set(throttled), key=lambda ip: -refused[ip] - throttled[ip])
        parts = []
        for ip in ips[:top]:
            part = f"{ip} {refused[ip]}"
            if throttled[ip]:
                part += f" (+{throttled[ip]} refused unread: too many failures)"
            parts.append(part)
        if len(ips) > top:
            parts.append(f"{len(ips) - top} more addresses")
        return (
            f"refused {sum(refused.values())} bad or missing tokens and "
            f"{sum(throttled.values())} connections of throttled addresses: {', '.join(parts)}"
        )

    def _forget(self, now: float) -> None:
        old = [ip for ip, e in self.windows.items() if now - e.since >= self.window]
        for ip in old:
            del self.windows[ip]


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
