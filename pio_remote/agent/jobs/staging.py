"""Getting files into the agent's cache: `upload.check` and `upload.put`.

    upload.check   {files: [{name, size, sha256}]}      -> {missing: [sha256], max_upload_bytes}
    upload.put     {name, size, sha256} + DATA..., EOF  -> {received}

A put is checked against its SHA-256 while it streams into a temp file, and only
a file that matches is renamed into place (cache.py), so an interrupted or
corrupted transfer leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import trio

from pio_remote.agent import gate
from pio_remote.agent.handlers import CallContext, CallFailed, handler
from pio_remote.agent.jobs import cache
from pio_remote.agent.jobs.workspace import cache_dir, client_id, disk_book, failed
from pio_remote.agent.quota import charged
from pio_remote.wire import transfer


def entry(raw: object, limit: int) -> transfer.FileEntry:
    if not isinstance(raw, dict):
        raise CallFailed("bad_params", "each file must be {name, size, sha256}")
    try:
        name = gate.name(raw.get("name"))
        size = transfer.check_size(raw.get("size"), limit, f"file {name}")
        return transfer.FileEntry(name, size, transfer.check_sha256(raw.get("sha256")))
    except transfer.TransferError as exc:
        raise failed(exc) from None


def checked_entries(files: list[dict[str, Any]], limit: int) -> list[transfer.FileEntry]:
    """Parse file entries and check each size and the total against the agent's limit."""
    entries = [entry(f, limit) for f in files]
    try:
        transfer.check_size(sum(e.size for e in entries), limit, "the upload")
    except transfer.TransferError as exc:
        raise failed(exc) from None
    return entries


@handler("upload.check")
async def upload_check(ctx: CallContext, files: list[dict[str, Any]]) -> dict[str, Any]:
    """Which of these blobs the agent lacks; checks every size before a byte is sent."""
    limit = ctx.agent.config.max_upload_bytes
    entries = checked_entries(files, limit)
    root = cache_dir(ctx)
    missing = []
    for e in entries:
        if not cache.has(root, e.sha256, e.size) and e.sha256 not in missing:
            missing.append(e.sha256)
    return {"missing": missing, "max_upload_bytes": limit}


@handler("upload.put")
async def upload_put(ctx: CallContext, name: str, size: int, sha256: str) -> dict[str, int]:
    """Receive one file; it enters the cache only if its size and SHA-256 match.

    Its room on disk is reserved (and older files evicted) before a byte is
    written: the client's quota and the agent's cap hold even while it streams.
    """
    limit = ctx.agent.config.max_upload_bytes
    e = entry({"name": name, "size": size, "sha256": sha256}, limit)
    root = cache_dir(ctx)
    book, owner = await disk_book(ctx), client_id(ctx)
    async with book.reserve(owner, charged(e.size), f"file {e.name}"):
        received = await _receive_blob(ctx, root, e)
        book.blob_added(owner, e.sha256, e.size)
    return {"received": received}


async def _receive_blob(ctx: CallContext, root: Path, e: transfer.FileEntry) -> int:
    """Stream the call's input into a temp file; rename it into the cache if it matches."""
    receiver = transfer.Receiver(e.name, e.size, e.sha256)
    tmp = cache.temp_path(root)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)  # read-only once done
        with os.fdopen(fd, "wb") as fh:
            while (item := await ctx.call.receive()) is not None:
                if isinstance(item, bytes):
                    receiver.feed(item)
                    fh.write(item)
            receiver.finish()
            fh.flush()
            await trio.to_thread.run_sync(os.fsync, fh.fileno())
        os.replace(tmp, root / e.sha256)
    except transfer.TransferError as exc:
        raise failed(exc) from None
    finally:
        tmp.unlink(missing_ok=True)  # after a rename this is a no-op
    return receiver.received
