"""What moves between client and agent for an upload, with no I/O of its own.

Files travel by content: each is named by its SHA-256, so the agent keeps a
content-addressed cache and the client sends only what the agent lacks. A
``Receiver`` checks one incoming stream against the size and hash it was
announced with; a project sync compares two *hash indexes* (relative path ->
size and hash) and sends only the difference.

    index = build_index(project_dir)            # client
    remote = {...}                              # agent's index of its copy
    delta = diff(index, remote)                 # delta.changed, delta.removed
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# Reading files in pieces this size keeps memory flat for any firmware size and
# is big enough that the per-read overhead does not show next to SHA-256.
READ_BLOCK = 1024 * 1024
# What `-r` syncs: PlatformIO's project layout, and nothing the build writes.
SYNC_ROOTS = ("platformio.ini", "src", "include", "lib", "test")
SKIP_DIRS = frozenset({".git", ".pio", ".svn", ".hg", "__pycache__", ".vscode"})
# A synced project with more files than this is almost surely not one (a home
# directory given to -d by mistake); PlatformIO projects have tens to hundreds.
MAX_SYNC_FILES = 20_000
# A relative path in a manifest; long enough for deep library trees.
MAX_PATH_LENGTH = 1024
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class TransferError(Exception):
    """A transfer broke a rule; the message names the file and what was wrong."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class FileEntry:
    """A file as it travels: the name it gets on the agent, its size and SHA-256."""

    name: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def hash_file(path: Path, name: str | None = None) -> FileEntry:
    """SHA-256 in one pass over a memory map: no read copies, the GIL free throughout."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:  # an empty file cannot be mapped
            return FileEntry(name or path.name, 0, hashlib.sha256().hexdigest())
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return FileEntry(name or path.name, len(view), hashlib.sha256(view).hexdigest())


def check_sha256(value: object) -> str:
    if not isinstance(value, str) or not SHA256_RE.match(value):
        raise TransferError("bad_params", f"{value!r} is not a lowercase hex SHA-256")
    return value


def check_relpath(path: object) -> str:
    """A relative POSIX path that stays inside the synced tree."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH_LENGTH or "\0" in path:
        raise TransferError("bad_params", f"{path!r} is not a relative path")
    pure = PurePosixPath(path)
    if pure.is_absolute() or "\\" in path or any(p in ("", ".", "..") for p in path.split("/")):
        raise TransferError("bad_params", f"{path!r} is not a relative path inside the project")
    if pure.parts[0] not in SYNC_ROOTS:
        raise TransferError(
            "bad_params", f"{path!r} is outside what is synced ({', '.join(SYNC_ROOTS)})"
        )
    return path


def check_size(size: object, limit: int, what: str) -> int:
    """The agent's size limit; the error names the size and the limit."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise TransferError("bad_params", f"size of {what} must be a non-negative integer")
    if size > limit:
        raise TransferError(
            "too_large",
            f"{what} is {size} bytes ({human_size(size)}), over the agent's limit of {limit} "
            f"bytes ({human_size(limit)}): raise max_upload_bytes in the agent's agent.toml",
        )
    return size


class Receiver:
    """Checks one incoming file stream against its announced size and SHA-256."""

    def __init__(self, name: str, size: int, sha256: str):
        self.name = name
        self.size = size
        self.sha256 = sha256
        self.received = 0
        self._digest = hashlib.sha256()

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.size:
            raise TransferError(
                "size_mismatch",
                f"{self.name}: received more than the announced {self.size} bytes",
            )
        self._digest.update(data)

    def finish(self) -> None:
        """Call at end of stream; raises unless size and hash both match."""
        if self.received != self.size:
            raise TransferError(
                "size_mismatch",
                f"{self.name}: stream ended after {self.received} of {self.size} bytes",
            )
        actual = self._digest.hexdigest()
        if actual != self.sha256:
            raise TransferError(
                "sha256_mismatch",
                f"{self.name}: SHA-256 is {actual}, not the announced {self.sha256}: "
                "the file changed while it was sent, or it was corrupted; nothing was written",
            )


# ---- project sync: hash indexes and deltas ---------------------------------------------

Index = dict[str, FileEntry]  # relative POSIX path -> entry (entry.name is the path)


def iter_project_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, absolute path) for what `-r` syncs, in a stable order."""
    for top in SYNC_ROOTS:
        base = root / top
        if base.is_file():
            yield top, base
            continue
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            for fname in sorted(filenames):
                full = Path(dirpath) / fname
                if full.is_file():
                    yield full.relative_to(root).as_posix(), full


def build_index(root: Path) -> Index:
    """Hash every synced file under ``root``."""
    index: Index = {}
    for rel, full in iter_project_files(root):
        if len(index) >= MAX_SYNC_FILES:
            raise TransferError(
                "too_many_files",
                f"{root} has more than {MAX_SYNC_FILES} files under "
                f"{', '.join(SYNC_ROOTS)}: is -d pointing at a PlatformIO project?",
            )
        index[rel] = hash_file(full, rel)
    return index


def index_to_json(index: Index) -> dict[str, list[object]]:
    return {path: [e.size, e.sha256] for path, e in index.items()}


def index_from_json(raw: object) -> Index:
    """Parse and check an index from the peer: every path and hash is validated."""
    if not isinstance(raw, dict):
        raise TransferError("bad_params", "a file index must be an object")
    if len(raw) > MAX_SYNC_FILES:
        raise TransferError("too_many_files", f"more than {MAX_SYNC_FILES} files in the index")
    index: Index = {}
    for path, value in raw.items():
        check_relpath(path)
        if not isinstance(value, list) or len(value) != 2:
            raise TransferError("bad_params", f"index entry for {path!r} must be [size, sha256]")
        size, sha = value
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise TransferError("bad_params", f"index entry for {path!r} has a bad size")
        index[path] = FileEntry(path, size, check_sha256(sha))
    return index


@dataclass(frozen=True)
class Delta:
    """What turns the agent's copy into the client's: files to send, paths to remove."""

    changed: list[FileEntry]
    removed: list[str]

    @property
    def bytes_changed(self) -> int:
        return sum(e.size for e in self.changed)


def diff(local: Index, remote: Index) -> Delta:
    changed = [e for path, e in sorted(local.items()) if remote.get(path) != e]
    removed = sorted(set(remote) - set(local))
    return Delta(changed, removed)


def unique_blobs(entries: Iterable[FileEntry]) -> list[FileEntry]:
    """One entry per distinct content: identical files travel once."""
    seen: dict[str, FileEntry] = {}
    for e in entries:
        seen.setdefault(e.sha256, e)
    return list(seen.values())
