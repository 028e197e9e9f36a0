"""Presence and node liveness in PostgreSQL: the blocking half of ``cluster.py``.

A node writes a presence row when one of its agents comes online and deletes
it when the agent leaves (both batched), and refreshes its own ``nodes`` row
every heartbeat. A node that dies writes nothing more: once its heartbeat is
older than the node timeout its rows stop being listed, and the next live
node's heartbeat deletes them (one DELETE on ``nodes``, cascading to its
presence rows). No per-agent write is needed to expire them.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from pio_remote.relay.cluster.schema import NOTIFY_CHANNEL
from pio_remote.relay.cluster.store import PgConnection, connect

# Rows a LIST answer may hold; the relay trims further to fit one frame.
MAX_LISTED = 5000

# One agent's presence row, written or updated; each statement adds its own WHERE.
_WRITE = """
INSERT INTO presence (owner, name, node_id, agent_key, shares, connected_at, remote)
SELECT %(owner)s, %(name)s, %(node)s, %(key)s, %(shares)s, %(since)s, %(remote)s
WHERE EXISTS (SELECT 1 FROM users WHERE users.name = %(owner)s)
ON CONFLICT (owner, name) DO UPDATE SET
    node_id = EXCLUDED.node_id, agent_key = EXCLUDED.agent_key,
    shares = EXCLUDED.shares, connected_at = EXCLUDED.connected_at, remote = EXCLUDED.remote
"""

_UPSERT = (
    _WRITE
    + """WHERE presence.connected_at <= EXCLUDED.connected_at
"""
)

# An agent's HELLO claims its name: it takes the row if the row is free, has
# the same key (the same agent, reconnecting), is on this node (this node's
# router decides there), or belongs to a node that is no longer alive. No row
# back: another key holds the name on a live node.
_CLAIM = (
    _WRITE
    + """WHERE presence.agent_key = EXCLUDED.agent_key
   OR presence.node_id = EXCLUDED.node_id
   OR NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = presence.node_id
                  AND n.heartbeat_at > now() - make_interval(secs => %(timeout)s))
RETURNING node_id
"""
)

_HOLDER = """
SELECT owner, name, agent_key, connected_at, node_id, remote FROM presence
WHERE owner = %s AND name = %s
"""

_DELETE = """
DELETE FROM presence WHERE node_id = %s AND (owner, name) IN
    (SELECT * FROM unnest(%s::text[], %s::text[]))
"""

_LIST = """
SELECT p.owner, p.name, p.agent_key, p.connected_at, p.node_id
FROM presence p JOIN nodes n USING (node_id)
WHERE n.heartbeat_at > now() - make_interval(secs => %s)
  AND (p.owner = %s OR %s = ANY (p.shares))
ORDER BY p.owner, p.name
LIMIT %s
"""


@dataclass(frozen=True, slots=True)
class AgentRow:
    """One online agent, as a presence row holds it."""

    owner: str
    name: str
    key: str
    shares: list[str]
    since: datetime
    node: str = ""
    remote: str = ""  # where the agent connected from, as its node saw it


class PresenceStore:
    """This node's row, its agents' rows, and the listing across all nodes."""

    def __init__(self, dsn: str, node_id: str, node_timeout: float) -> None:
        self.db = PgConnection(dsn)
        self.node_id = node_id
        self.node_timeout = node_timeout
        # Tells this process's row from a second process started with the same
        # --node-id (or from our own row after others expired it).
        self.instance = secrets.token_hex(8)

    def close(self) -> None:
        self.db.close()

    def register(self, agents: Sequence[AgentRow]) -> None:
        """(Re)claim this node's row and replace its presence rows with ``agents``."""

        def run(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO nodes (node_id, instance) VALUES (%s, %s) "
                    "ON CONFLICT (node_id) DO UPDATE SET instance = EXCLUDED.instance, "
                    "started_at = now(), heartbeat_at = now()",
                    (self.node_id, self.instance),
                )
                conn.execute("DELETE FROM presence WHERE node_id = %s", (self.node_id,))
                self._upsert(conn, agents)

        self.db.run(run)

    def heartbeat(self) -> tuple[bool, int]:
        """Refresh our row, expire dead nodes: (our row is still ours, nodes expired)."""

        def run(conn: psycopg.Connection[Any]) -> tuple[bool, int]:
            cur = conn.execute(
                "UPDATE nodes SET heartbeat_at = now() WHERE node_id = %s AND instance = %s",
                (self.node_id, self.instance),
            )
            ours = cur.rowcount == 1
            expired = conn.execute(
                "DELETE FROM nodes WHERE heartbeat_at < now() - make_interval(secs => %s)",
                (self.node_timeout,),
            ).rowcount
            return ours, expired

        return self.db.run(run)

    def write(self, online: Sequence[AgentRow], offline: Sequence[tuple[str, str]]) -> None:
        """One batch of presence changes, in one transaction."""

        def run(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                if offline:
                    owners = [owner for owner, _ in offline]
                    names = [name for _, name in offline]
                    conn.execute(_DELETE, (self.node_id, owners, names))
                self._upsert(conn, online)

        self.db.run(run)

    def claim(self, agent: AgentRow) -> AgentRow | None:
        """Take ``agent``'s name for it, or return the row of the other key holding it."""

        def run(conn: psycopg.Connection[Any]) -> AgentRow | None:
            with conn.transaction():
                params = self._params(agent) | {"timeout": self.node_timeout}
                if conn.execute(_CLAIM, params).fetchone() is not None:
                    return None
                row = conn.execute(_HOLDER, (agent.owner, agent.name)).fetchone()
            if row is None:  # no such account (any more): nothing to hold
                return None
            owner, name, key, since, node, remote = row
            return AgentRow(owner, name, key, [], since, node, remote)

        return self.db.run(run)

    def list_agents(self, account: str) -> list[AgentRow]:
        """Every agent online on a live node that ``account`` may reach."""
        rows = self.db.run(
            lambda c: c.execute(_LIST, (self.node_timeout, account, account, MAX_LISTED)).fetchall()
        )
        return [AgentRow(o, n, key, [], since, node) for o, n, key, since, node in rows]

    def unregister(self) -> None:
        """On a clean shutdown: our row and presence go at once, not after the timeout."""
        self.db.run(
            lambda c: c.execute(
                "DELETE FROM nodes WHERE node_id = %s AND instance = %s",
                (self.node_id, self.instance),
            )
        )

    def _upsert(self, conn: psycopg.Connection[Any], agents: Sequence[AgentRow]) -> None:
        if not agents:
            return
        with conn.cursor() as cur:
            cur.executemany(_UPSERT, [self._params(a) for a in agents])

    def _params(self, a: AgentRow) -> dict[str, Any]:
        return {
            "owner": a.owner,
            "name": a.name,
            "node": self.node_id,
            "key": a.key,
            "shares": a.shares,
            "since": a.since,
            "remote": a.remote,
        }


class Listener:
    """A connection that LISTENs on the relay's channel; reconnects after a failure."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None

    def wait(self, timeout: float) -> tuple[bool, list[dict[str, Any]]]:
        """Events that arrive within ``timeout``: (freshly connected, events).

        Freshly connected means events may have been missed while we were not
        listening; the caller re-reads what they would have told it.
        """
        fresh = False
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn)
            self._conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            fresh = True
        events = []
        try:
            # stop_after=1: back as soon as one packet of events arrives (it
            # may hold several), so an event waits for no timeout.
            for note in self._conn.notifies(timeout=timeout, stop_after=1):
                try:
                    events.append(json.loads(note.payload))
                except ValueError:
                    continue
        except psycopg.OperationalError:
            self.close()
            raise
        return fresh, events

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
