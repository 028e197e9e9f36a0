"""One relay node among several: presence, heartbeat and cross-node events.

Only with ``relay serve --database ... --node-id ...``. Task tree, under serve::

    cluster.run
    ├── write_presence   batches agent online/offline changes into one
    │                    transaction (worker thread)
    ├── heartbeat        refreshes this node's row, expires dead nodes, and
    │                    rewrites all our presence rows after a database outage
    └── listen           LISTEN pio_relay (worker thread): account changes wake
                         the token watcher; a takeover closes our old agent

The session layer calls ``agent_changed`` (never blocks) when an agent goes
online or offline here; the writer reads the router's current state for each
changed name when it runs, so a burst of reconnects is one write per name.
The set of changed names is bounded by the number of agents. Database errors
never touch a live connection: forwarding goes on, presence is rewritten once
the database is back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import trio

from pio_remote.relay.cluster.presence import AgentRow, Listener, PresenceStore
from pio_remote.relay.cluster.store import DB_ERRORS
from pio_remote.relay.connection import CLOSE_REPLACED
from pio_remote.relay.router import NameTaken, Peer, Router

log = logging.getLogger("relay")

# How old a heartbeat may get before the node counts as dead (relay serve
# --node-timeout), and how many beats fit in it. Five beats: one slow write (or
# a short database restart) does not expire a live node. HAProxy takes a dead
# node out within ~2 s, and its agents come back through the others, whatever
# the timeout; it only bounds how long agents that do not come back are listed.
NODE_TIMEOUT_S = 10.0
BEATS_PER_TIMEOUT = 5
# How long one wait for events lasts before the listener thread looks again
# (also bounds how long a cancelled listener thread lingers).
LISTEN_WAIT_S = 1.0
# Pause after a database error before trying again.
RETRY_S = 1.0
# Database threads of one node: presence writes, heartbeats and LIST share one
# connection, so one thread; events have their own connection and thread.
DB_THREADS = 1


def agent_row(peer: Peer, since: datetime) -> AgentRow:
    remote = str(getattr(peer, "remote", ""))
    return AgentRow(peer.account, peer.name, peer.key, sorted(peer.shares), since, remote=remote)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_time(text: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        return None


class Cluster:
    """This node's view of the cluster; ``run`` keeps the database in step."""

    def __init__(
        self,
        dsn: str,
        node_id: str,
        router: Router,
        on_accounts_changed: Callable[[], None],
        node_timeout: float = NODE_TIMEOUT_S,
    ) -> None:
        self.node_id = node_id
        self.router = router
        self.store = PresenceStore(dsn, node_id, node_timeout)
        self.listener = Listener(dsn)
        self.on_accounts_changed = on_accounts_changed
        self.heartbeat_s = node_timeout / BEATS_PER_TIMEOUT
        self.limiter = trio.CapacityLimiter(DB_THREADS)
        self.listen_limiter = trio.CapacityLimiter(1)
        self._dirty: set[tuple[str, str]] = set()
        # When each online agent connected, to the microsecond: of two
        # connections of one agent on two nodes, the later one wins the row.
        self._since: dict[tuple[str, str], tuple[Peer, datetime]] = {}
        self._wake = trio.Event()
        self._resync = False  # a write failed: rewrite everything on the next heartbeat

    # -- called from the session layer (never blocks) ------------------------

    def agent_changed(self, peer: Peer) -> None:
        key = (peer.account, peer.name)
        if self.router.agents.get(key) is peer:
            self._since[key] = (peer, datetime.now(UTC))
        else:
            known = self._since.get(key)
            if known is not None and known[0] is peer:
                del self._since[key]
        self._dirty.add(key)
        self._wake.set()

    def rewrite(self, account: str, name: str) -> None:
        """Write this name's row again from the router (a refused claim on this
        node may have overwritten it)."""
        self._dirty.add((account, name))
        self._wake.set()

    async def claim(
        self, account: str, name: str, key: str, shares: frozenset[str], remote: str
    ) -> NameTaken | None:
        """Claim ``name`` in the database for a HELLO with ``key``; NameTaken when
        another key holds it on a live node. With the database away, the node
        admits on its own view (forwarding never waits for the database)."""
        row = AgentRow(account, name, key, sorted(shares), datetime.now(UTC), remote=remote)
        try:
            taken = await self._db(self.store.claim, row)
        except DB_ERRORS as exc:
            log.warning("cannot check agent name %s/%s in the database: %s", account, name, exc)
            return None
        if taken is None:
            return None
        return NameTaken(taken.key, taken.remote or "?", _iso(taken.since), taken.node)

    def since(self, peer: Peer) -> datetime:
        known = self._since.get((peer.account, peer.name))
        return known[1] if known is not None and known[0] is peer else datetime.now(UTC)

    async def list_agents(self, account: str) -> list[dict[str, object]]:
        """Agents ``account`` may reach on every live node; ours are always current."""
        local = {
            item["agent"]: item | {"node": self.node_id}
            for item in self.router.list_agents(account)
        }
        try:
            rows = await self._db(self.store.list_agents, account)
        except DB_ERRORS as exc:
            log.warning("cannot list agents from the database (listing this node's): %s", exc)
            rows = []
        merged = dict(local)
        for row in rows:
            ref = f"{row.owner}/{row.name}"
            if ref not in merged:
                merged[ref] = {
                    "agent": ref,
                    "owner": row.owner,
                    "name": row.name,
                    "key": row.key,
                    "connected_at": _iso(row.since),
                    "shared": row.owner != account,
                    "node": row.node,
                }
        return [merged[ref] for ref in sorted(merged, key=lambda r: tuple(r.split("/", 1)))]

    # -- tasks -----------------------------------------------------------------

    async def start(self) -> None:
        """Claim this node's row (at startup; raises if the database is away)."""
        await self._db(self.store.register, [])

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_presence)
                nursery.start_soon(self._heartbeat)
                nursery.start_soon(self._listen)
        finally:
            with trio.move_on_after(2, shield=True):
                try:
                    await self._db(self.store.unregister)
                except DB_ERRORS:
                    pass  # our rows expire with the heartbeat
            self.store.close()
            self.listener.close()

    async def _write_presence(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            dirty, self._dirty = self._dirty, set()
            online, offline = [], []
            for key in dirty:
                agent = self.router.agents.get(key)
                if agent is None:
                    offline.append(key)
                else:
                    online.append(agent_row(agent, self.since(agent)))
            try:
                await self._db(self.store.write, online, offline)
            except DB_ERRORS as exc:
                log.warning(
                    "cannot write presence (rewriting it when the database is back): %s", exc
                )
                self._resync = True
                await trio.sleep(RETRY_S)

    async def _heartbeat(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_s)
            try:
                ours, expired = await self._db(self.store.heartbeat)
                if expired:
                    log.info("expired %d dead node(s) and their agents", expired)
                if not ours or self._resync:
                    if not ours:
                        log.warning(
                            "node row %r was expired or taken: claiming it again", self.node_id
                        )
                    self._resync = False
                    agents = list(self.router.agents.values())
                    rows = [agent_row(a, self.since(a)) for a in agents]
                    await self._db(self.store.register, rows)
            except DB_ERRORS as exc:
                self._resync = True
                log.warning("node heartbeat failed (will retry): %s", exc)

    async def _listen(self) -> None:
        while True:
            try:
                fresh, events = await trio.to_thread.run_sync(
                    self.listener.wait,
                    LISTEN_WAIT_S,
                    limiter=self.listen_limiter,
                    abandon_on_cancel=True,
                )
            except DB_ERRORS as exc:
                log.warning("lost the database event connection (will reconnect): %s", exc)
                await trio.sleep(RETRY_S)
                continue
            if fresh:
                self.on_accounts_changed()  # anything missed while not listening
            for event in events:
                self.handle_event(event)

    def handle_event(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "account":
            self.on_accounts_changed()
        elif kind == "takeover" and event.get("node") == self.node_id:
            key = (str(event.get("owner")), str(event.get("name")))
            agent = self.router.agents.get(key)
            if agent is None:
                return
            since = _parse_time(event.get("since"))
            if since is not None and since < self.since(agent):
                return  # ours is the newer connection: the other node's notice is stale
            log.info("%r connected on another node: closing it here", agent)
            agent.kill(  # type: ignore[attr-defined]
                "replaced",
                f"another agent named '{agent.name}' connected for account "
                f"'{agent.account}' (on another relay node)",
                CLOSE_REPLACED,
            )

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
