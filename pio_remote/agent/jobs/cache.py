"""The agent's content-addressed file cache: ``<work>/cache/<sha256>``.

A blob's name is its SHA-256, so a client that sends the same firmware twice
sends it once, and two clients sending the same file cannot clobber each
other. Blobs are read-only and only ever appear by rename after their hash
was checked (see upload.put). Jobs get hard links, not copies; a blob whose
mtime or size changed under a job (an uploader wrote to its input) no longer
matches its name and is dropped. Blobs count against their sender's disk quota
and the agent's disk cap; the least recently used (by atime, which ``touch``
sets explicitly) are evicted to make room (quota.py, disk.py).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

from pio_remote.agent import gate
from pio_remote.wire.transfer import TransferError

log = logging.getLogger(__name__)

Stamp = tuple[Path, int, int]  # blob, mtime_ns, size


def directory(work: Path) -> Path:
    path = work / "cache"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def touch(blob: Path) -> None:
    """Mark as used: atime only, since mtime tells whether the blob was modified."""
    st = blob.stat()
    os.utime(blob, ns=(time.time_ns(), st.st_mtime_ns))


def has(root: Path, sha256: str, size: int) -> bool:
    blob = root / sha256
    try:
        if blob.stat().st_size != size:
            return False
        touch(blob)
    except FileNotFoundError:
        return False
    return True


def temp_path(root: Path) -> Path:
    """Named with the agent's pid, so a later agent can tell an orphan from a live put."""
    return root / f".put-{os.getpid()}-{secrets.token_hex(8)}.tmp"


def blob(root: Path, sha256: str, name: str) -> Path:
    path = root / sha256
    try:
        touch(path)
    except FileNotFoundError:
        raise TransferError(
            "not_staged",
            f"{name} (SHA-256 {sha256[:12]}...) is not on the agent: send it with "
            "upload.put first (it may have been evicted from the cache; run again)",
        ) from None
    return path


def copy_to(root: Path, sha256: str, tree: Path, parts: Sequence[str]) -> None:
    """Copy a blob to ``tree/parts`` by rename (synced project files: builds may touch
    them), never through a symlink (gate.replace)."""
    gate.replace(blob(root, sha256, parts[-1]), tree, parts)


def link_to(root: Path, sha256: str, job: Path, parts: Sequence[str]) -> Stamp:
    """Hard-link a blob into a job as a new file (a cached upload costs no copy); an
    existing file or a symlink on the way is refused, never overwritten (gate.place)."""
    src = blob(root, sha256, parts[-1])
    gate.place(src, job, parts)
    st = src.stat()
    return src, st.st_mtime_ns, st.st_size


def drop_modified(stamps: list[Stamp]) -> None:
    """After a job: a blob whose mtime or size changed no longer matches its name."""
    for path, mtime, size in stamps:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if (st.st_mtime_ns, st.st_size) != (mtime, size):
            log.warning("an uploader modified %s in place; dropped it from the cache", path)
            path.unlink(missing_ok=True)
