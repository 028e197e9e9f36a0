"""The ``upload.put`` calls of one session that are still receiving, by SHA-256.

A client sends ``upload.flash`` right behind the puts it depends on, without
waiting for their results (one round trip less per upload). The flash waits
here until those puts have ended, then looks in the cache as before: a put
that failed leaves its blob missing, and the flash says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import trio


class PutsInFlight:
    """Counts of running puts per SHA-256; ``settled`` waits until none of some are left."""

    def __init__(self) -> None:
        self._running: dict[str, int] = {}
        self._changed = trio.Event()

    def started(self, method: str, params: dict[str, Any]) -> str | None:
        """Note a call as it arrives (before its task runs); returns the key to end it with."""
        sha = params.get("sha256")
        if method != "upload.put" or not isinstance(sha, str):
            return None
        sha = sha.lower()
        self._running[sha] = self._running.get(sha, 0) + 1
        return sha

    def ended(self, sha: str | None) -> None:
        if sha is None or sha not in self._running:
            return
        self._running[sha] -= 1
        if not self._running[sha]:
            del self._running[sha]
        self._changed.set()
        self._changed = trio.Event()

    async def settled(self, shas: Iterable[str]) -> None:
        """Return once no put of these blobs is running in this session."""
        wanted = {s.lower() for s in shas}
        while not wanted.isdisjoint(self._running):
            await self._changed.wait()
