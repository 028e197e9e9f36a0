"""The agent's disk budget as a ledger: what each client key stores, and what to evict.

Two kinds of things take the agent's disk on a client's behalf: blobs in the
content-addressed cache (cache.py; charged to the client that sent them first)
and synced project trees (projects.py; charged to their owner, build output
included). Both are charged by the blocks they take, so a flood of tiny files
costs what it really costs. This module only decides, without I/O; the shell
(agent/disk.py) measures the disk, applies the decisions and deletes the files.

Two limits: a quota per client key, and a hard cap for the whole agent that is
never exceeded, whatever was used recently. A request that would go over evicts
the least recently used items first: the client's own for its quota, anyone's
for the cap; items used in the last ``grace`` seconds go last, and items in use
by a running call (pinned) never. A request that cannot fit even then is
refused with one line naming the limit, the usage and the agent.toml key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

BLOCK = 4096
QUOTA_KEY = "client_disk_quota_bytes"
CAP_KEY = "agent_disk_cap_bytes"


def charged(size: int) -> int:
    """Bytes a file of ``size`` bytes takes on disk: whole blocks, plus one for its inode."""
    return -(-size // BLOCK) * BLOCK + BLOCK


@dataclass(frozen=True, slots=True)
class Item:
    key: str  # "blob:<sha256>" or "project:<owner>/<id>"; "put:..." for a reservation
    owner: str  # the client key's id; "" when unknown (a blob from before the ledger)
    size: int  # bytes charged
    used: float  # last use, seconds since the epoch


@dataclass(frozen=True, slots=True)
class Admit:
    evict: tuple[Item, ...]


@dataclass(frozen=True, slots=True)
class Refuse:
    message: str


def mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


@dataclass
class Ledger:
    quota: int  # per client key
    cap: int  # the whole agent
    grace: float = 600.0
    items: dict[str, Item] = field(default_factory=dict)
    pins: Counter[str] = field(default_factory=Counter)

    def usage(self, owner: str) -> int:
        return sum(i.size for i in self.items.values() if i.owner == owner)

    @property
    def total(self) -> int:
        return sum(i.size for i in self.items.values())

    # ---- decisions ----------------------------------------------------------------------

    def plan(self, owner: str, need: int, now: float, what: str = "this request") -> Admit | Refuse:
        """Room for ``need`` more bytes for ``owner``: what to evict, or why it cannot fit."""
        if need > self.quota:
            return Refuse(
                f"quota: {what} needs {mib(need)} on the agent, more than the per-client disk "
                f"quota of {mib(self.quota)} (agent.toml {QUOTA_KEY}; "
                f"your usage is {mib(self.usage(owner))})"
            )
        if need > self.cap:
            return Refuse(
                f"quota: {what} needs {mib(need)} on the agent, more than its disk cap of "
                f"{mib(self.cap)} (agent.toml {CAP_KEY})"
            )
        victims: dict[str, Item] = {}
        used = self.usage(owner)
        for item in self._candidates(now, owner):
            if used + need <= self.quota:
                break
            victims[item.key] = item
            used -= item.size
        if used + need > self.quota:
            return Refuse(
                f"quota: {what} needs {mib(need)}, and your usage is {mib(used)} of the "
                f"per-client disk quota of {mib(self.quota)} (agent.toml {QUOTA_KEY}), "
                "all of it in use by calls still running: wait for them, or raise the quota"
            )
        total = self.total - sum(v.size for v in victims.values())
        for item in self._candidates(now):
            if total + need <= self.cap:
                break
            if item.key not in victims:
                victims[item.key] = item
                total -= item.size
        if total + need > self.cap:
            return Refuse(
                f"quota: {what} needs {mib(need)}, and the agent's disk holds {mib(total)} of "
                f"its cap of {mib(self.cap)} (agent.toml {CAP_KEY}) in files that running "
                "calls use: try again when they end"
            )
        return Admit(tuple(victims.values()))

    def _candidates(self, now: float, owner: str | None = None) -> list[Item]:
        """Evictable items, least recently used first; those in their grace period last."""
        items = [
            i
            for i in self.items.values()
            if not self.pins[i.key]
            and not i.key.startswith("put:")
            and (owner is None or i.owner == owner)
        ]
        return sorted(items, key=lambda i: (now - i.used < self.grace, i.used, i.key))

    # ---- applying what happened ---------------------------------------------------------

    def apply(self, admit: Admit) -> None:
        for item in admit.evict:
            self.items.pop(item.key, None)

    def put(self, item: Item) -> None:
        """Add or replace an item (a new blob, a remeasured project, a reservation)."""
        old = self.items.get(item.key)
        if old is not None and old.owner and item.key.startswith("blob:"):
            item = replace(item, owner=old.owner)  # a blob stays charged to its first sender
        self.items[item.key] = item

    def remove(self, key: str) -> None:
        self.items.pop(key, None)

    def touch(self, key: str, now: float) -> None:
        item = self.items.get(key)
        if item is not None and item.used < now:
            self.items[key] = replace(item, used=now)

    def pin(self, key: str) -> None:
        self.pins[key] += 1

    def unpin(self, key: str) -> None:
        self.pins[key] -= 1
        if self.pins[key] <= 0:
            del self.pins[key]

    def over(self, owners: Iterable[str], now: float) -> Admit:
        """After something grew in place (a build): evictions that bring it back under."""
        victims: dict[str, Item] = {}
        for owner in owners:
            plan = self.plan(owner, 0, now)
            if isinstance(plan, Admit):
                victims.update((v.key, v) for v in plan.evict)
        return Admit(tuple(victims.values()))
