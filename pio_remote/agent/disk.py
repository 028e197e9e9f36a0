"""The disk budget's shell: measures the agent's disk, applies quota.py's decisions.

One ``DiskBook`` per agent working directory. It learns what is on disk once
(at the first call that stores anything, in a worker thread), then keeps the
ledger as calls store blobs and sync projects. Blobs are charged to the client
that sent them first, recorded in ``<work>/cache-owners`` (one ``<sha256> <owner>``
line per blob, appended; compacted at start), so a restart does not forget whose
they are. Evicted projects are renamed into ``trash/`` at once and removed in a
worker thread, so a call that syncs the same project again never races the removal.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import trio

from pio_remote.agent.handlers import CallFailed
from pio_remote.agent.quota import BLOCK, Admit, Item, Ledger, Refuse, charged

log = logging.getLogger(__name__)

OWNERS = "cache-owners"
_SHA = re.compile(r"^[0-9a-f]{64}$")
_OWNER = re.compile(r"^[0-9a-f]{16}$")


def project_key(owner: str, project: str) -> str:
    return f"project:{owner}/{project}"


def tree_size(root: Path) -> int:
    """Bytes a tree takes, charged as quota.py charges (blocks, one more per entry)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        total += BLOCK
        for name in filenames:
            try:
                total += charged(os.lstat(os.path.join(dirpath, name)).st_size)
            except FileNotFoundError:
                continue
    return total


class DiskBook:
    """The ledger of one working directory, kept in step with its files."""

    def __init__(self, work: Path, quota: int, cap: int):
        self.work = work
        self.ledger = Ledger(quota, cap)
        self._loaded = trio.Event()
        self._loading = False
        self._owner_lines = 0  # lines in cache-owners: rewritten once mostly evicted blobs

    @property
    def cache(self) -> Path:
        return self.work / "cache"

    @property
    def projects(self) -> Path:
        return self.work / "projects"

    async def ready(self) -> DiskBook:
        if not self._loading:
            self._loading = True
            try:
                await trio.to_thread.run_sync(self.load)
            finally:  # a load that failed leaves what it learnt; calls go on with it
                self._loaded.set()
        await self._loaded.wait()
        return self

    # ---- learning the disk --------------------------------------------------------------

    def load(self) -> None:
        """Every blob and synced project on disk, with its owner and last use."""
        shutil.rmtree(self.work / "trash", ignore_errors=True)
        owners = self._read_owners()
        live: dict[str, str] = {}
        for path in self.cache.iterdir() if self.cache.is_dir() else []:
            if not _SHA.match(path.name):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            owner = owners.get(path.name, "")
            live[path.name] = owner
            self.ledger.put(Item(f"blob:{path.name}", owner, charged(st.st_size), st.st_atime))
        self._write_owners(live)
        for owner_dir in self.projects.iterdir() if self.projects.is_dir() else []:
            for root in owner_dir.iterdir() if owner_dir.is_dir() else []:
                key = project_key(owner_dir.name, root.name)
                try:
                    used = root.stat().st_mtime  # in_use() sets it on every use
                except FileNotFoundError:
                    continue
                self.ledger.put(Item(key, owner_dir.name, tree_size(root), used))

    def _read_owners(self) -> dict[str, str]:
        owners: dict[str, str] = {}
        try:
            text = (self.work / OWNERS).read_text()
        except (FileNotFoundError, UnicodeDecodeError):
            return owners
        for line in text.splitlines():
            sha, _, owner = line.partition(" ")
            if _SHA.match(sha) and _OWNER.match(owner):
                owners.setdefault(sha, owner)  # the first sender is charged
        return owners

    def _write_owners(self, live: dict[str, str]) -> None:
        if not self.cache.is_dir():
            return
        tmp = self.work / f".{OWNERS}.{secrets.token_hex(4)}.tmp"
        lines = [f"{s} {o}\n" for s, o in live.items() if o]
        tmp.write_text("".join(lines))
        os.replace(tmp, self.work / OWNERS)
        self._owner_lines = len(lines)

    def _refresh_blob_times(self) -> dict[str, float]:
        """Blobs' last use, from their atime (cache.touch sets it on every use)."""
        times = {}
        for key in [k for k in self.ledger.items if k.startswith("blob:")]:
            try:
                times[key] = (self.cache / key[5:]).stat().st_atime
            except FileNotFoundError:
                times[key] = 0.0
        return times

    # ---- admitting a request -----------------------------------------------------------

    async def admit(self, owner: str, need: int, what: str) -> str:
        """Make room for ``need`` bytes, or fail with ``quota``; returns the reservation's key."""
        plan = self.ledger.plan(owner, need, time.time(), what)
        if not isinstance(plan, Admit) or plan.evict:
            # Eviction ahead: blobs are used without the ledger hearing of it, so
            # learn their last use from the disk before choosing.
            times = await trio.to_thread.run_sync(self._refresh_blob_times)
            for key, used in times.items():
                self.ledger.touch(key, used)
            plan = self.ledger.plan(owner, need, time.time(), what)
        if isinstance(plan, Refuse):
            raise CallFailed("quota", plan.message)
        key = f"put:{secrets.token_hex(8)}"
        self.ledger.apply(plan)
        self.ledger.put(Item(key, owner, need, time.time()))
        self._delete(plan.evict)
        return key

    @asynccontextmanager
    async def reserve(self, owner: str, need: int, what: str) -> AsyncIterator[str]:
        """Room for a request while it runs (yields its key); the caller records what it stored."""
        key = await self.admit(owner, need, what)
        try:
            yield key
        finally:
            self.ledger.remove(key)

    def _delete(self, items: tuple[Item, ...]) -> None:
        """Remove evicted files now (a blob is one unlink; a project is renamed away)."""
        trash: list[Path] = []
        for item in items:
            kind, _, name = item.key.partition(":")
            if kind == "blob":
                (self.cache / name).unlink(missing_ok=True)
            elif kind == "project":
                src = self.projects / name
                dest = self.work / "trash" / secrets.token_hex(8)
                dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                try:
                    os.rename(src, dest)
                except FileNotFoundError:
                    continue
                trash.append(dest)
        if items:
            log.info(
                "disk budget: evicted %d item(s): %s",
                len(items),
                ", ".join(i.key for i in items[:5]) + (" ..." if len(items) > 5 else ""),
            )
        if trash:
            trio.lowlevel.spawn_system_task(_remove_trees, trash)

    # ---- recording what calls stored ----------------------------------------------------

    def blob_added(self, owner: str, sha256: str, size: int) -> None:
        key = f"blob:{sha256}"
        new = key not in self.ledger.items
        self.ledger.put(Item(key, owner, charged(size), time.time()))
        if new and owner:
            with open(self.work / OWNERS, "a") as fh:
                fh.write(f"{sha256} {owner}\n")
            self._owner_lines += 1
            blobs = [k for k in self.ledger.items if k.startswith("blob:")]
            if self._owner_lines > 2 * len(blobs) + 1000:  # evictions left most lines stale
                live = {k[5:]: self.ledger.items[k].owner for k in blobs}
                self._write_owners(live)

    def project_used(self, owner: str, project: str) -> None:
        """Mark as used, in the ledger and on disk (the directory's mtime, for a restart)."""
        self.ledger.touch(project_key(owner, project), time.time())
        try:
            os.utime(self.projects / owner / project)
        except FileNotFoundError:
            pass

    async def project_measured(self, owner: str, project: str, reservation: str = "") -> None:
        """A project changed on disk (sync, build): charge what it takes now; evict if over.

        ``reservation``, the room reserved for the change, goes in the same step as
        the project's new size comes: never counted twice, never not at all.
        """
        size = await trio.to_thread.run_sync(tree_size, self.projects / owner / project)
        self.ledger.remove(reservation)
        if size == 0:  # not (or no longer) on disk
            self.ledger.remove(project_key(owner, project))
            return
        self.ledger.put(Item(project_key(owner, project), owner, size, time.time()))
        over = self.ledger.over([owner], time.time())
        self.ledger.apply(over)
        self._delete(over.evict)

    @contextmanager
    def pinned(self, owner: str, project: str) -> Iterator[None]:
        """A running call uses this project: it is never evicted meanwhile."""
        with self.pinned_keys([project_key(owner, project)]):
            yield

    @contextmanager
    def pinned_keys(self, keys: list[str]) -> Iterator[None]:
        """Items a running call uses (a project, the blobs it is synced from): kept meanwhile."""
        now = time.time()
        for key in keys:
            self.ledger.pin(key)
            self.ledger.touch(key, now)
        try:
            yield
        finally:
            for key in keys:
                self.ledger.unpin(key)


async def _remove_trees(paths: list[Path]) -> None:
    for path in paths:
        await trio.to_thread.run_sync(shutil.rmtree, path, True)
