"""Routing state: who is online, who may reach whom, and the channel maps.

No I/O here. The server feeds decisions in and sends whatever frames the
answers call for, so every rule below is testable without a socket.

The relay's one access rule ("the lock"): a client of account C may reach the
agent ``owner/name`` iff ``C == owner`` or C is in that agent's shares list.

Channels are pairs of ids. A client picks its own id (``cid``); the relay picks
the agent-side id (``aid``), unique within that agent connection. Each side's
``channels`` dict maps its id to ``(other peer, other side's id)``, so routing a
DATA frame is one dict lookup.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from pio_remote.relay.accounts import NAME_RE
from pio_remote.wire import envelope

AGENT = "agent"
CLIENT = "client"

# Candidates listed in an "ambiguous name" reason; keeps the CLOSE frame small.
MAX_LISTED_CANDIDATES = 16

# Open channels per connection. A channel is a few dozen bytes of state here,
# but each one can pin buffers in the peers; 1024 is far above any real
# session (one per terminal, upload or forwarded port) and bounds a flood.
MAX_CHANNELS_PER_CONNECTION = 1024


class ProtocolError(Exception):
    """The peer broke the protocol; its connection gets ERROR and is closed."""


class Peer:
    """One authenticated connection as the router sees it.

    The server subclasses this to hang its socket state on the same object
    (one object per connection keeps idle memory small).
    """

    __slots__ = (
        "role",
        "account",
        "name",
        "shares",
        "key",
        "connected_at",
        "channels",
        "next_channel",
        "online",
    )

    def __init__(self, role: str, account: str) -> None:
        self.role = role
        self.account = account
        self.name = ""
        self.shares: frozenset[str] = frozenset()
        self.key = ""
        self.connected_at = ""
        self.channels: dict[int, tuple[Peer, int]] = {}
        self.next_channel = 1
        self.online = False

    def set_agent(self, name: str, shares: frozenset[str], key: str) -> None:
        self.name = name
        self.shares = shares
        self.key = key
        self.connected_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

    @property
    def ref(self) -> str:
        return f"{self.account}/{self.name}"

    def __repr__(self) -> str:
        who = self.ref if self.role == AGENT else self.account
        return f"<{self.role} {who}>"


@dataclass(frozen=True, slots=True)
class Opened:
    """OPEN succeeded: send OPEN(aid, client account) to ``agent``, OPENED to the client."""

    agent: Peer
    aid: int


@dataclass(frozen=True, slots=True)
class Refused:
    """OPEN failed: send CLOSE(cid, reason) to the client; count ``drop`` in metrics."""

    reason: str
    drop: str


@dataclass(frozen=True, slots=True)
class Notice:
    """A CLOSE the server owes ``peer`` on ``channel`` because the other end went away."""

    peer: Peer
    channel: int
    reason: str


@dataclass(frozen=True, slots=True)
class NameTaken:
    """HELLO refused: another agent (another key) holds this name for this account.

    ``remote`` is where the running agent connected from, as the relay saw it.
    """

    holder_key: str
    remote: str
    since: str
    node: str = ""

    def message(self, account: str, name: str) -> str:
        where = f"{self.remote} via relay node {self.node}" if self.node else self.remote
        return (
            f"agent name '{name}' is taken for account '{account}' by another agent "
            f"(key {fingerprint_hex(self.holder_key)}, connected from {where} since "
            f"{self.since}): give this one another name with 'pio-remote agent start -n NAME', "
            "or stop that agent first"
        )


def fingerprint_hex(key: str) -> str:
    """The fingerprint of a hex public key, as agents and clients print it (e2e.fingerprint)."""
    try:
        raw = bytes.fromhex(key)
    except ValueError:
        return "?"
    digest = hashlib.sha256(raw).hexdigest()[:32]
    return ":".join(digest[i : i + 4] for i in range(0, 32, 4))


def name_conflict(holder: Peer | None, key: str) -> bool:
    """True when a HELLO with ``key`` must be refused because ``holder`` has the name.

    The same key is the same agent (its home) reconnecting or restarted: it takes
    over. A different key is another agent, and the running one keeps its name.
    """
    return holder is not None and holder.key != key


def can_reach(account: str, agent: Peer) -> bool:
    return account == agent.account or account in agent.shares


class Router:
    """Online agents and the channels between clients and agents."""

    def __init__(self) -> None:
        self.agents: dict[tuple[str, str], Peer] = {}
        # name -> owner -> agent: resolves a bare "name" without a full scan.
        self._by_name: dict[str, dict[str, Peer]] = {}

    # -- presence ---------------------------------------------------------

    def holder(self, account: str, name: str) -> Peer | None:
        """The agent online here under ``account``/``name``, if any."""
        return self.agents.get((account, name))

    def add_agent(self, agent: Peer) -> Peer | None:
        """Put ``agent`` online; return the agent it replaces, if any.

        The caller must ``remove()`` the replaced agent (its channels get
        "agent replaced") and close its connection.
        """
        key = (agent.account, agent.name)
        old = self.agents.get(key)
        self.agents[key] = agent
        self._by_name.setdefault(agent.name, {})[agent.account] = agent
        agent.online = True
        if old is not None:
            old.online = False
        return old

    def add_client(self, client: Peer) -> None:
        client.online = True

    def remove(self, peer: Peer, reason: str) -> list[Notice]:
        """Forget ``peer`` and every channel it had; idempotent.

        Returns the CLOSE notices owed to the other end of each channel.
        """
        key = (peer.account, peer.name)
        if peer.role == AGENT and self.agents.get(key) is peer:
            del self.agents[key]
            owners = self._by_name[peer.name]
            del owners[peer.account]
            if not owners:
                del self._by_name[peer.name]
        peer.online = False
        notices = []
        for other, other_ch in peer.channels.values():
            if other.channels.pop(other_ch, None) is not None:
                notices.append(Notice(other, other_ch, reason))
        peer.channels.clear()
        return notices

    # -- channels ---------------------------------------------------------

    def resolve(self, account: str, ref: str) -> Peer | Refused:
        """Find the agent ``ref`` ("name" or "owner/name") as seen by ``account``."""
        owner, sep, name = ref.partition("/")
        if not NAME_RE.fullmatch(owner) or (sep and not NAME_RE.fullmatch(name)):
            return Refused(
                f"invalid agent reference {ref[:80]!r}: use 'name' or 'owner/name'", "bad_ref"
            )
        if sep:
            agent = self.agents.get((owner, name))
            if agent is not None and can_reach(account, agent):
                return agent
            return Refused(_unreachable(ref, account), "not_reachable")
        name = owner
        owners = self._by_name.get(name, {})
        own = owners.get(account)
        if own is not None:
            return own
        shared = [a for a in owners.values() if account in a.shares]
        if len(shared) == 1:
            return shared[0]
        if not shared:
            return Refused(_unreachable(name, account), "not_reachable")
        refs = sorted(a.ref for a in shared)
        candidates = ", ".join(refs[:MAX_LISTED_CANDIDATES])
        if len(refs) > MAX_LISTED_CANDIDATES:
            candidates += f" (and {len(refs) - MAX_LISTED_CANDIDATES} more)"
        return Refused(
            f"agent name {name!r} is ambiguous for account {account!r}: use one of {candidates}",
            "ambiguous",
        )

    def open(self, client: Peer, cid: int, ref: str) -> Opened | Refused:
        """Handle a client's OPEN(cid, ref)."""
        if cid == envelope.CONTROL_CHANNEL:
            raise ProtocolError("OPEN on channel 0: channel 0 is the connection itself")
        if cid in client.channels:
            raise ProtocolError(f"OPEN on channel {cid}, which is already open")
        if len(client.channels) >= MAX_CHANNELS_PER_CONNECTION:
            return Refused(
                f"too many open channels on this connection "
                f"(max {MAX_CHANNELS_PER_CONNECTION}): close some first",
                "channel_limit",
            )
        found = self.resolve(client.account, ref)
        if isinstance(found, Refused):
            return found
        agent = found
        if len(agent.channels) >= MAX_CHANNELS_PER_CONNECTION:
            return Refused(
                f"agent {agent.ref!r} has too many open channels "
                f"(max {MAX_CHANNELS_PER_CONNECTION}): try again later",
                "channel_limit",
            )
        aid = self._allocate(agent)
        agent.channels[aid] = (client, cid)
        client.channels[cid] = (agent, aid)
        return Opened(agent, aid)

    def close(self, peer: Peer, channel: int) -> tuple[Peer, int] | None:
        """Forget a channel closed by ``peer``; return where to forward the CLOSE."""
        route = peer.channels.pop(channel, None)
        if route is None:
            return None
        other, other_ch = route
        other.channels.pop(other_ch, None)
        return route

    def list_agents(self, account: str) -> list[dict[str, object]]:
        """The LIST answer: every online agent ``account`` may reach, sorted."""
        reachable = sorted(
            (a for a in self.agents.values() if can_reach(account, a)),
            key=lambda a: (a.account, a.name),
        )
        return [
            {
                "agent": a.ref,
                "owner": a.account,
                "name": a.name,
                "key": a.key,
                "connected_at": a.connected_at,
                "shared": a.account != account,
            }
            for a in reachable
        ]

    @staticmethod
    def _allocate(agent: Peer) -> int:
        """The next free agent-side channel id (never 0; wraps around)."""
        ch = agent.next_channel
        while ch == envelope.CONTROL_CHANNEL or ch in agent.channels:
            ch = ch % envelope.MAX_CHANNEL + 1
        agent.next_channel = ch % envelope.MAX_CHANNEL + 1
        return ch


def _unreachable(ref: str, account: str) -> str:
    return f"agent {ref!r} is offline or not shared with account {account!r}"
