"""Device leases: who reserved which port on this agent, and until when.

Pure bookkeeping in the manner of pio_remote/relay/router.py: every method takes the
time as an argument and returns its decision as a value (``Granted``,
``Busy``, ``Released``, ``NotHeld``); the trio shell (lease_calls.py) waits,
persists and answers. Nothing here sleeps, reads a clock or touches a file.

Two kinds of lease (docs/testing.md):

- **session leases** (``device lock`` without ``--ttl``): held by one open
  call. They carry a short TTL that the call renews while it lives, and the
  call releases them when it ends for any reason, so a killed CI job never
  leaves a board locked (labgrid's issue #1739).
- **detached leases** (``device lock --ttl 30m``): outlive the session and an
  agent restart (the shell stores them atomically), and end at their TTL or
  at ``device unlock``.

A lease belongs to a client key. Another command of the same client may use
the port if it names the lease id (``PIO_REMOTE_LEASE`` / ``--lease``).
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

# A session lease's TTL: renewed every SESSION_TTL / 3 while its call lives. It
# only matters if the agent somehow missed the session's end.
SESSION_TTL = 60.0
# The longest --ttl: a week covers a long weekend of soak tests; beyond that a
# forgotten lock is more likely than a real need.
MAX_TTL = 7 * 24 * 3600.0


def when(epoch: float) -> str:
    """A lease's end as both the agent's refusals and the client's tables print it."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class Lease:
    id: str
    port: str
    holder: str  # the client's account and key fingerprint, as others see it
    key: str  # the holder's client key fingerprint (full)
    until: float  # wall-clock seconds (epoch)
    note: str = ""
    detached: bool = False  # taken with --ttl: survives its session and a restart

    def public(self) -> dict[str, Any]:
        """What ``device list`` shows: never the key itself, only the holder's name."""
        return {"holder": self.holder, "until": self.until, "note": self.note}


@dataclass(frozen=True)
class Granted:
    lease: Lease


@dataclass(frozen=True)
class Busy:
    """Someone else holds the port."""

    lease: Lease


@dataclass(frozen=True)
class Released:
    lease: Lease


@dataclass(frozen=True)
class NotHeld:
    port: str


class LeaseBook:
    """At most one lease per port; expired leases vanish on the next look."""

    def __init__(self) -> None:
        self._by_port: dict[str, Lease] = {}

    def expire(self, now: float) -> list[Released]:
        gone = [lease for lease in self._by_port.values() if lease.until <= now]
        for lease in gone:
            del self._by_port[lease.port]
        return [Released(lease) for lease in gone]

    def get(self, port: str, now: float) -> Lease | None:
        self.expire(now)
        return self._by_port.get(port)

    def active(self, now: float) -> dict[str, Lease]:
        self.expire(now)
        return dict(self._by_port)

    def acquire(
        self,
        port: str,
        holder: str,
        key: str,
        now: float,
        ttl: float,
        *,
        detached: bool,
        note: str = "",
        lease_id: str | None = None,
    ) -> Granted | Busy:
        """A new lease, or the one in the way. The same holder may take it over again."""
        current = self.get(port, now)
        if current is not None and not (current.key == key and current.id == lease_id):
            return Busy(current)
        lease = Lease(
            lease_id or secrets.token_hex(8), port, holder, key, now + ttl, note, detached
        )
        self._by_port[port] = lease
        return Granted(lease)

    def renew(self, lease: Lease, now: float, ttl: float) -> Lease | None:
        """Push a session lease's expiry out; None if it is no longer held."""
        current = self._by_port.get(lease.port)
        if current is None or current.id != lease.id:
            return None
        renewed = Lease(**{**asdict(lease), "until": now + ttl})
        self._by_port[lease.port] = renewed
        return renewed

    def release(
        self, port: str, key: str, now: float, *, force: bool = False
    ) -> Released | NotHeld | Busy:
        """``device unlock``: only the holder's key may release its lease; ``force``
        (``--force``, which the shell allows the agent's owner only) breaks anyone's."""
        current = self.get(port, now)
        if current is None:
            return NotHeld(port)
        if current.key != key and not force:
            return Busy(current)
        del self._by_port[port]
        return Released(current)

    def drop(self, lease: Lease) -> Released | None:
        """The lease's own session ended: release it if it is still the one held."""
        current = self._by_port.get(lease.port)
        if current is None or current.id != lease.id:
            return None
        del self._by_port[lease.port]
        return Released(current)

    def blocking(self, port: str, key: str, presented: frozenset[str], now: float) -> Lease | None:
        """The lease that keeps this caller off the port, or None if it may use it."""
        current = self.get(port, now)
        if current is None or (current.key == key and current.id in presented):
            return None
        return current

    # ---- persistence (detached leases only) ---------------------------------------------

    def detached(self, now: float) -> list[dict[str, Any]]:
        return [asdict(lease) for lease in self.active(now).values() if lease.detached]

    def restore(self, saved: object, now: float) -> int:
        """Load detached leases saved before a restart; expired or malformed ones are dropped."""
        if not isinstance(saved, list):
            return 0
        count = 0
        for raw in saved:
            try:
                lease = Lease(**raw)
            except TypeError:
                continue
            if lease.detached and lease.until > now and isinstance(lease.port, str):
                self._by_port[lease.port] = lease
                count += 1
        return count
