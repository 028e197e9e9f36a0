"""Accounts and presence in PostgreSQL, for several relay nodes (docs/scaling.md).

Why psycopg 3: it is the maintained PostgreSQL driver (psycopg2 is in
maintenance only), and its blocking API runs unchanged in trio's worker
threads. asyncpg is faster but speaks asyncio only, and the relay runs on
trio. Every call here blocks; the relay makes them from worker threads behind
a ``trio.CapacityLimiter`` (``tokens.py``, ``cluster.py``), so a slow or
restarting database holds up no frame.

One ``PgAccounts`` holds one connection and reconnects on the next call after
it broke (a database restart). Passwords never go on a command line: put them
in libpq's password file (``PGPASSFILE``, ``~/.pgpass``) or ``PGPASSWORD``.
The schema lives in ``pgschema.py``; ``relay db upgrade`` applies it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import psycopg

from pio_remote.relay.accounts import AccountError, User, check_name, hash_token, new_token
from pio_remote.relay.cluster.schema import SCHEMA_VERSION, schema_version, upgrade

# Seconds to wait for a connection to the database. A node whose database is
# away must answer "retry later" quickly, not hang its worker threads.
CONNECT_TIMEOUT_S = 3
# Longest a single statement may run; every statement here is an index lookup
# or a small batch, so anything longer means the database is in trouble.
STATEMENT_TIMEOUT_MS = 5000

# Errors that mean "the database cannot be used right now".
DB_ERRORS: tuple[type[Exception], ...] = (psycopg.Error,)


def connect(dsn: str) -> psycopg.Connection[Any]:
    """An autocommit connection with bounded connect and statement times."""
    return psycopg.connect(
        dsn,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_S,
        options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        application_name="pio-remote-relay",
    )


def check_dsn(dsn: str) -> str:
    """A ``postgresql://`` URL (or libpq key=value string); AccountError if not one."""
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise AccountError(
            f"--database is not a PostgreSQL URL ({exc}): use postgresql://USER@HOST:PORT/DB"
        ) from None
    return dsn


class PgConnection:
    """One connection, opened on first use and again after it broke."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    def get(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn)
        return self._conn

    def run(self, fn: Any) -> Any:
        """``fn(conn)`` under the lock; a connection that failed is dropped for the next call."""
        with self._lock:
            conn = self.get()
            try:
                return fn(conn)
            except psycopg.OperationalError:
                conn.close()
                self._conn = None
                raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class PgAccounts:
    """The PostgreSQL account store: the same methods as ``accounts.Accounts``."""

    def __init__(self, dsn: str) -> None:
        self.db = PgConnection(check_dsn(dsn))
        self._epoch: int | None = None
        try:
            version = self.db.run(schema_version)
        except psycopg.Error as exc:
            self.db.close()
            raise AccountError(
                f"cannot use the database {_safe(dsn)}: {_first_line(exc)} "
                "(check --database, and that PostgreSQL is running)"
            ) from None
        if version != SCHEMA_VERSION:
            self.db.close()
            raise AccountError(
                f"the database {_safe(dsn)} has schema version {version}, this relay needs "
                f"{SCHEMA_VERSION}: run 'pio-remote relay db upgrade --database URL' first"
            )

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> PgAccounts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, name: str) -> str:
        check_name(name)
        token = new_token()
        try:
            self.db.run(
                lambda c: c.execute(
                    "INSERT INTO users (name, token_hash) VALUES (%s, %s)",
                    (name, hash_token(token)),
                )
            )
        except psycopg.errors.UniqueViolation:
            raise AccountError(
                f"user {name!r} already exists: use 'pio-remote relay token {name} "
                "--regenerate' to issue a new token"
            ) from None
        return token

    def users(self) -> list[User]:
        rows = self.db.run(
            lambda c: c.execute("SELECT name, created_at FROM users ORDER BY name").fetchall()
        )
        return [User(name, _iso(created)) for name, created in rows]

    def remove(self, name: str) -> None:
        cur = self.db.run(lambda c: c.execute("DELETE FROM users WHERE name = %s", (name,)))
        if cur.rowcount == 0:
            raise _unknown(name)

    def regenerate(self, name: str) -> str:
        token = new_token()
        cur = self.db.run(
            lambda c: c.execute(
                "UPDATE users SET token_hash = %s WHERE name = %s", (hash_token(token), name)
            )
        )
        if cur.rowcount == 0:
            raise _unknown(name)
        return token

    def account_for(self, token_hash: str) -> str | None:
        row = self.db.run(
            lambda c: c.execute(
                "SELECT name FROM users WHERE token_hash = %s", (token_hash,)
            ).fetchone()
        )
        return row[0] if row else None

    def tokens(self) -> dict[str, str]:
        def read(conn: psycopg.Connection[Any]) -> dict[str, str]:
            with conn.transaction():  # the epoch and the rows from one snapshot
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                self._epoch = conn.execute("SELECT n FROM account_epoch").fetchone()[0]
                return dict(conn.execute("SELECT token_hash, name FROM users").fetchall())

        return self.db.run(read)

    def changed(self) -> bool:
        """One-row read of the epoch that a trigger bumps on every change of ``users``."""
        epoch = self.db.run(lambda c: c.execute("SELECT n FROM account_epoch").fetchone()[0])
        return epoch != self._epoch


def _unknown(name: str) -> AccountError:
    return AccountError(
        f"no user {name!r}: see 'pio-remote relay user list', or create it with "
        f"'pio-remote relay user add {name}'"
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _safe(dsn: str) -> str:
    """The DSN without any password, for messages."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparsable URL)"
    shown: Iterable[str] = (
        f"{key}={value}" for key, value in parts.items() if key not in ("password", "passfile")
    )
    return "'" + " ".join(shown) + "'"


def upgrade_database(dsn: str) -> tuple[int, int]:
    """``relay db upgrade``: (version before, version after); AccountError names the fix."""
    check_dsn(dsn)
    try:
        with connect(dsn) as conn:
            return upgrade(conn)
    except ValueError as exc:
        raise AccountError(str(exc)) from None
    except psycopg.Error as exc:
        raise AccountError(
            f"cannot upgrade the database {_safe(dsn)}: {_first_line(exc)} "
            "(check --database, that PostgreSQL is running, and that the user may create tables)"
        ) from None
