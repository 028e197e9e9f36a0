"""The relay's token table against any AccountStore: threads, refreshes, failures."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from pio_remote.relay.accounts import Accounts, AccountStore, hash_token
from pio_remote.relay.tokens import StoreUnavailable, TokenTable


class MemoryStore:
    """An AccountStore in memory, the way a PostgreSQL store would plug in."""

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}
        self.version = 0
        self.seen = 0
        self.reads = 0
        self.fail: Exception | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.threads: set[str] = set()

    def tokens(self) -> dict[str, str]:
        self.threads.add(threading.current_thread().name)
        self.reads += 1
        return dict(self.rows)

    def changed(self) -> bool:
        self.threads.add(threading.current_thread().name)
        self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        changed, self.seen = self.seen != self.version, self.version
        return changed

    def close(self) -> None:
        pass

    def set(self, token_hash: str, account: str | None) -> None:
        if account is None:
            del self.rows[token_hash]
        else:
            self.rows[token_hash] = account
        self.version += 1


def test_the_sqlite_store_is_an_account_store(tmp_path: Path) -> None:
    with Accounts(tmp_path) as accounts:
        store: AccountStore = accounts
        assert not store.changed()
        token = accounts.add("alice")
        assert store.tokens() == {hash_token(token): "alice"}


async def test_lookups_are_dict_hits_and_misses_refresh_in_a_thread() -> None:
    store = MemoryStore()
    store.set("h1", "alice")
    table = TokenTable(store)
    await table.load()
    assert table.generation == 1
    reads = store.reads
    assert await table.account_for("h1") == "alice"
    assert store.reads == reads  # a hit never touches the store
    store.set("h2", "bob")  # issued after the last refresh
    assert await table.account_for("h2") == "bob"
    assert table.generation == 2
    assert await table.account_for("nope") is None  # a miss with no change: no reload
    assert table.generation == 2
    assert threading.main_thread().name not in store.threads


async def test_concurrent_misses_share_one_refresh() -> None:
    store = MemoryStore()
    table = TokenTable(store)
    await table.load()
    store.gate.clear()  # the store is slow: the first refresh blocks in its thread
    store.set("h", "carol")
    found: list[str | None] = []

    async def look() -> None:
        found.append(await table.account_for("h"))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(look)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert found == []
        store.gate.set()
    assert found == ["carol"] * 20
    assert store.reads == 2  # the load, and one refresh for all twenty


async def test_an_unreadable_store_is_a_clear_error_for_misses_only() -> None:
    store = MemoryStore()
    store.set("h1", "alice")
    table = TokenTable(store)
    await table.load()
    store.fail = sqlite3.OperationalError("database is locked")
    assert await table.account_for("h1") == "alice"  # known tokens keep working
    with pytest.raises(StoreUnavailable, match="database is locked"):
        await table.account_for("h2")
    store.fail = None
    store.set("h2", "bob")
    assert await table.account_for("h2") == "bob"


async def test_revocation_shows_in_the_generation() -> None:
    store = MemoryStore()
    store.set("h1", "alice")
    table = TokenTable(store)
    await table.load()
    seen = table.generation
    store.set("h1", None)
    await table.refresh()
    assert table.generation == seen + 1 and "h1" not in table.accounts
