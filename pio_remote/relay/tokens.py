"""The tokens a running relay accepts: an in-memory table, kept fresh from the store.

Checking a token is one dict lookup in the event loop. The store is only read
in worker threads, behind a CapacityLimiter, so a slow disk or another
process's long write lock (SQLite waits up to its busy timeout) holds up no
connection that is already up, and no frame. The table is refreshed when the
store says it changed: by the relay's watcher once a second (so a revoked
token drops within about a second), and when a token is not in the table (it
may have been issued a moment ago). Refreshes never overlap: whoever asks
while one is running waits for that one.
"""

from __future__ import annotations

import sqlite3

import trio

from pio_remote.relay.accounts import AccountStore

# Threads reading the store at once. One: a SQLite connection serves one
# thread at a time, and refreshes never overlap anyway. A store with a
# connection pool may allow more.
STORE_THREADS = 1

try:  # PostgreSQL stores (pgstore.py) come with the "cluster" extra
    from psycopg import Error as _PgError
except ImportError:  # then only SQLite stores exist, and nothing raises psycopg's errors
    _PG_ERRORS: tuple[type[Exception], ...] = ()
else:
    _PG_ERRORS = (_PgError,)

# What a store may raise when it cannot be read right now.
STORE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, *_PG_ERRORS, OSError)


class StoreUnavailable(Exception):
    """The account store could not be read; the message says why."""


class TokenTable:
    """Token hash -> account, as of the last successful read of the store."""

    def __init__(self, store: AccountStore, threads: int = STORE_THREADS) -> None:
        self.store = store
        self.limiter = trio.CapacityLimiter(threads)
        self.accounts: dict[str, str] = {}
        # Bumped on every reload, so the watcher sees changes that a lookup's
        # refresh picked up first.
        self.generation = 0
        self._refreshing: trio.Event | None = None
        self._error: StoreUnavailable | None = None

    async def load(self) -> None:
        """Read every token now (at startup)."""
        self._install(await self._read(lambda: (True, self.store.tokens())))

    async def refresh(self) -> None:
        """Re-read the tokens if the store changed; raises StoreUnavailable."""
        if self._refreshing is not None:  # one is running: its answer is ours
            await self._refreshing.wait()
            if self._error is not None:
                raise self._error
            return
        self._refreshing = done = trio.Event()
        self._error = None
        try:
            self._install(await self._read(self._changed_tokens))
        except StoreUnavailable as exc:
            self._error = exc
            raise
        finally:
            self._refreshing = None
            done.set()

    async def account_for(self, token_hash: str) -> str | None:
        """The account of ``token_hash``, or None; raises StoreUnavailable."""
        account = self.accounts.get(token_hash)
        if account is None:
            await self.refresh()  # a token issued since the last refresh?
            account = self.accounts.get(token_hash)
        return account

    def _changed_tokens(self) -> tuple[bool, dict[str, str] | None]:
        if not self.store.changed():
            return False, None
        return True, self.store.tokens()

    async def _read(self, fn: object) -> tuple[bool, dict[str, str] | None]:
        try:
            return await trio.to_thread.run_sync(fn, limiter=self.limiter)  # type: ignore[arg-type]
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from None

    def _install(self, result: tuple[bool, dict[str, str] | None]) -> None:
        changed, accounts = result
        if changed and accounts is not None:
            self.accounts = accounts
            self.generation += 1
