"""The PostgreSQL schema of a relay cluster, as numbered migrations.

``relay db upgrade`` applies the missing ones, each in its own transaction,
under an advisory lock so two nodes upgrading at once cannot both apply one.
A node refuses to start on a schema that is not exactly ``SCHEMA_VERSION``.

What is here: accounts (names, token *hashes*), nodes and their heartbeats,
and presence (which agent is online on which node, its public key, shares and
the address it connected from).
No key that could read traffic: the relay never has one.

Triggers send the cross-node events on channel ``pio_relay`` as JSON:
``{"kind": "account", "name": ...}`` when a user is removed or its token
regenerated, and ``{"kind": "takeover", "owner", "name", "node", "since"}`` when an
agent's presence moves to another node (``node`` is the old one, ``since`` when
the new connection came).
"""

from __future__ import annotations

from typing import Any

import psycopg

NOTIFY_CHANNEL = "pio_relay"
# Arbitrary, fixed: the advisory lock held while migrating.
MIGRATION_LOCK = 0x70696F72

_V1 = """
CREATE TABLE users (
    name text PRIMARY KEY,
    token_hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Bumped by every change of users: a node polls this one row once a second
-- as a backstop for a missed NOTIFY.
CREATE TABLE account_epoch (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    n bigint NOT NULL
);
INSERT INTO account_epoch VALUES (true, 0);

CREATE FUNCTION pio_users_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE account_epoch SET n = n + 1;
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('pio_relay',
            json_build_object('kind', 'account', 'name', OLD.name)::text);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER users_changed AFTER INSERT OR UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION pio_users_changed();

-- One row per running relay node; heartbeat_at is refreshed every few
-- seconds. A node whose heartbeat is too old is dead: its row (and, by the
-- cascade, its presence rows) is deleted by any live node.
CREATE TABLE nodes (
    node_id text PRIMARY KEY,
    instance text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE presence (
    owner text NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    name text NOT NULL,
    node_id text NOT NULL REFERENCES nodes ON DELETE CASCADE,
    agent_key text NOT NULL,
    shares text[] NOT NULL DEFAULT '{}',
    connected_at timestamptz NOT NULL,
    PRIMARY KEY (owner, name)
);
CREATE INDEX presence_node ON presence (node_id);
CREATE INDEX presence_shares ON presence USING gin (shares);

CREATE FUNCTION pio_presence_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pio_relay', json_build_object('kind', 'takeover',
        'owner', OLD.owner, 'name', OLD.name, 'node', OLD.node_id,
        'since', NEW.connected_at)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER presence_moved AFTER UPDATE ON presence
    FOR EACH ROW WHEN (OLD.node_id <> NEW.node_id)
    EXECUTE FUNCTION pio_presence_moved();
"""

# Where each agent connected from, as its relay node saw it: named to a second
# agent (another key) that asks for the same name (docs/relay.md).
_V2 = """
ALTER TABLE presence ADD COLUMN remote text NOT NULL DEFAULT '';
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The version the database is at; 0 for an empty database."""
    row = conn.execute("SELECT to_regclass('pio_schema')").fetchone()
    if row is None or row[0] is None:
        return 0
    found = conn.execute("SELECT version FROM pio_schema").fetchone()
    return int(found[0]) if found else 0


def upgrade(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """Apply the missing migrations; returns (version before, version after)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS pio_schema (version integer NOT NULL)")
        before = schema_version(conn)
    if before > SCHEMA_VERSION:
        raise ValueError(
            f"the database has schema version {before}, newer than this relay's "
            f"{SCHEMA_VERSION}: upgrade pio-remote"
        )
    for version in range(before + 1, SCHEMA_VERSION + 1):
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            if schema_version(conn) >= version:  # another node got there first
                continue
            conn.execute(MIGRATIONS[version - 1])
            conn.execute("DELETE FROM pio_schema")
            conn.execute("INSERT INTO pio_schema VALUES (%s)", (version,))
    return before, SCHEMA_VERSION
