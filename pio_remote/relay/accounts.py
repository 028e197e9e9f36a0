"""Relay accounts: names and hashed bearer tokens in one SQLite file.

Tokens are ``secrets.token_urlsafe(32)`` (256 bits of entropy), so a plain
SHA-256 is an adequate hash: there is nothing to brute-force, and the hash is
the lookup key. The plaintext token is shown once, when it is issued, and never
stored. The CLI edits the database in its own process; a running relay notices
through ``changed()`` (SQLite's ``PRAGMA data_version``) and drops connections
whose token no longer exists.

``AccountStore`` is what the relay needs from a store: plain blocking methods,
which the relay only calls from worker threads (``tokens.py``), so another
store (PostgreSQL, say) can implement the same few methods.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

DB_NAME = "accounts.sqlite3"

# Account and agent names: safe in URLs, paths, log lines and "owner/name" refs.
NAME_PATTERN = r"[A-Za-z0-9._-]{1,64}"
NAME_RE = re.compile(NAME_PATTERN)

# 32 random bytes -> 43 url-safe characters; the same size as an X25519 key.
TOKEN_BYTES = 32

# A CLI write holds the lock for a few milliseconds; waiting longer than this
# means something else is wrong, and the caller should hear about it.
BUSY_TIMEOUT_S = 2.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
)
"""


class AccountError(Exception):
    """A user-facing account problem; the message names the fix."""


class AccountStore(Protocol):
    """The account store as the relay uses it. Blocking; called from worker threads."""

    def tokens(self) -> dict[str, str]:
        """Every valid token hash, mapped to its account."""
        ...

    def changed(self) -> bool:
        """True if the accounts may have changed since the last call (cheap to poll)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class User:
    name: str
    created_at: str


def hash_token(token: str) -> str:
    """SHA-256 hex of a bearer token: what the database stores and looks up."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise AccountError(
            f"invalid account name {name!r}: use 1-64 characters from A-Z a-z 0-9 . _ -"
        )
    return name


@contextlib.contextmanager
def _private_umask() -> Iterator[None]:
    """Create files readable by the owner only (the db and SQLite's journal)."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


class Accounts:
    """The SQLite account store; one instance holds one SQLite connection.

    With ``create=False`` (commands that only read or change existing accounts)
    a missing directory or database is an AccountError, and nothing is created.
    """

    def __init__(self, data_dir: Path, *, create: bool = True) -> None:
        data_dir = Path(data_dir)
        self.path = data_dir / DB_NAME
        if not create and not self.path.is_file():
            raise AccountError(
                f"no account database in {str(data_dir)!r} (no {DB_NAME} there): check "
                f"--data-dir, or create the first account with 'pio-remote relay user add "
                f"NAME --data-dir {data_dir}'"
            )
        if not data_dir.exists():
            data_dir.mkdir(mode=0o700, parents=True)
        os.chmod(data_dir, 0o700)
        with _private_umask():
            if not self.path.exists():
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
            os.chmod(self.path, 0o600)
            self._db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            self._db.execute(_SCHEMA)
        self._data_version = self._read_data_version()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Accounts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, name: str) -> str:
        """Create a user and return its token (the only time it is visible)."""
        check_name(name)
        token = new_token()
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        try:
            with _private_umask():
                self._db.execute(
                    "INSERT INTO users (name, token_hash, created_at) VALUES (?, ?, ?)",
                    (name, hash_token(token), now),
                )
        except sqlite3.IntegrityError:
            raise AccountError(
                f"user {name!r} already exists: use 'pio-remote relay token {name} "
                "--regenerate' to issue a new token"
            ) from None
        return token

    def users(self) -> list[User]:
        rows = self._db.execute("SELECT name, created_at FROM users ORDER BY name").fetchall()
        return [User(name, created) for name, created in rows]

    def remove(self, name: str) -> None:
        with _private_umask():
            cur = self._db.execute("DELETE FROM users WHERE name = ?", (name,))
        if cur.rowcount == 0:
            raise self._unknown(name)

    def regenerate(self, name: str) -> str:
        """Issue a new token for ``name``; the old one stops working at once."""
        token = new_token()
        with _private_umask():
            cur = self._db.execute(
                "UPDATE users SET token_hash = ? WHERE name = ?", (hash_token(token), name)
            )
        if cur.rowcount == 0:
            raise self._unknown(name)
        return token

    def account_for(self, token_hash: str) -> str | None:
        """The account a token hash belongs to, or None."""
        row = self._db.execute(
            "SELECT name FROM users WHERE token_hash = ?", (token_hash,)
        ).fetchone()
        return row[0] if row else None

    def tokens(self) -> dict[str, str]:
        """Every valid token hash, mapped to its account."""
        return dict(self._db.execute("SELECT token_hash, name FROM users"))

    def changed(self) -> bool:
        """True if another process committed since the last call (cheap to poll)."""
        version = self._read_data_version()
        if version == self._data_version:
            return False
        self._data_version = version
        return True

    def _read_data_version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    @staticmethod
    def _unknown(name: str) -> AccountError:
        return AccountError(
            f"no user {name!r}: see 'pio-remote relay user list', or create it with "
            f"'pio-remote relay user add {name}'"
        )
