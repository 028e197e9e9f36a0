"""Synced projects for `run -r`: the agent's copy of a client's tree, and building it.

    project.index  {project}        -> DATA: JSON {path: [size, sha256]}, EOF -> {files}
    project.sync   {project} + DATA: JSON index, EOF    -> {updated, removed}

Each client key gets its own tree per project (``projects/<client>/<project>/``),
so clients never see or clobber each other's. Files come out of the verified
cache; ``platformio.ini`` is stored twice, as the client sent it (for its
``upload_*`` options) and as the agent wrote it from an allow-list (iniwriter:
what PlatformIO here runs). Both, and the
manifest that says what the tree holds, are replaced atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from pio_remote.agent import gate
from pio_remote.agent.disk import DiskBook
from pio_remote.agent.handlers import CallContext, CallFailed, handler
from pio_remote.agent.jobs import cache, uploader
from pio_remote.agent.jobs.iniwriter import AgentIni
from pio_remote.agent.jobs.workspace import (
    agent_ini,
    cache_dir,
    check_remote_build,
    client_id,
    disk_book,
    failed,
    no_platformio,
    read_client_ini,
    run_sandboxed,
    work_root,
)
from pio_remote.agent.quota import BLOCK, charged
from pio_remote.project import INI, Artifacts, ProjectConfig, find_artifacts
from pio_remote.wire import transfer

MANIFEST = ".pio-remote-manifest.json"
# The client's platformio.ini as sent: its upload_* options, never run by PlatformIO.
CLIENT_INI = ".pio-remote-client.ini"
# A project index as JSON: ~100 bytes per file, MAX_SYNC_FILES files.
MAX_INDEX_BYTES = 16 * 1024 * 1024


def project_path(ctx: CallContext, project: str) -> Path:
    """Each client key gets its own tree, so clients never see or clobber each other's.

    Only project.sync creates it, within the client's disk quota: asking about
    a fresh id costs no disk.
    """
    return work_root(ctx) / "projects" / client_id(ctx) / gate.project_id(project)


def make_project_dir(ctx: CallContext, project_dir: Path) -> None:
    """Create a project's tree (project.sync, within the quota), no symlink on the way."""
    work = work_root(ctx)
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(gate.open_dir(work, project_dir.relative_to(work).parts, create=True))


@asynccontextmanager
async def in_use(ctx: CallContext, project_dir: Path) -> AsyncIterator[DiskBook]:
    """A call syncs or builds a project: never evicted meanwhile, charged what it takes after."""
    book, owner = await disk_book(ctx), client_id(ctx)
    with book.pinned(owner, project_dir.name):
        book.project_used(owner, project_dir.name)
        try:
            yield book
        finally:
            with trio.CancelScope(shield=True):
                await book.project_measured(owner, project_dir.name)


def sync_size(wanted: transfer.Index) -> int:
    """Disk a synced tree will take: its files, its directories, the copies the agent keeps."""
    dirs = {Path(p).parent for p in wanted} | {Path(".")}
    for d in list(dirs):
        dirs.update(d.parents)
    files = sum(charged(e.size) for e in wanted.values())
    ini = wanted[INI].size if INI in wanted else 0
    manifest = charged(100 * len(wanted) + 100)
    return files + charged(ini) + manifest + BLOCK * len(dirs)


def _load_manifest(root: Path) -> transfer.Index:
    try:
        index = transfer.index_from_json(json.loads(gate.read_text(root, (MANIFEST,))))
    except (FileNotFoundError, ValueError, transfer.TransferError, CallFailed):
        return {}
    return {p: e for p, e in index.items() if gate.regular_file(root, gate.relpath(p))}


def checked_artifacts(project_dir: Path, values: ProjectConfig, env: str) -> Artifacts:
    """What a build made, only if it lies inside the project and no symlink leads to it:
    the uploader reads it, and test.build copies it into the cache."""
    build = gate.inside(project_dir, values.build_dir(env), "the build directory")
    art = find_artifacts(values, env)
    for path in art.files:
        parts = gate.inside(project_dir, path, "the build output")
        if parts[: len(build)] != build or not gate.regular_file(project_dir, parts):
            raise CallFailed("bad_project", f"{path.name}: not a regular file in the build")
    return art


@handler("project.index")
async def project_index(ctx: CallContext, project: str) -> dict[str, int]:
    """The agent's copy of a project, as a hash index; fails early without PlatformIO."""
    check_remote_build(ctx)
    if uploader.find_platformio() is None:
        raise no_platformio(ctx)
    index = _load_manifest(project_path(ctx, project))
    await ctx.call.send(json.dumps(transfer.index_to_json(index)).encode())
    await ctx.call.send_eof()
    return {"files": len(index)}


# One index received at a time per client key: each is held whole (up to
# MAX_INDEX_BYTES) until parsed, outside the memory budget of unread input, so
# a client's 64 calls in each of its sessions may not hold 64 x 16 MiB; and one
# client waiting on its own slow index never delays another's.
_index_slots: dict[tuple[int, str], trio.Lock] = {}


async def _receive_index(ctx: CallContext) -> transfer.Index:
    """The streamed index, one at a time per client key."""
    slot = _index_slots.setdefault((id(ctx.agent), client_id(ctx)), trio.Lock())
    async with slot:
        return await _read_index(ctx)


async def _read_index(ctx: CallContext) -> transfer.Index:
    raw = bytearray()
    while (item := await ctx.call.receive()) is not None:
        if isinstance(item, bytes):
            raw += item
            if len(raw) > MAX_INDEX_BYTES:
                raise CallFailed("too_large", f"project index over {MAX_INDEX_BYTES} bytes")
    try:
        wanted = transfer.index_from_json(json.loads(raw))
        transfer.check_size(
            sum(e.size for e in wanted.values()), ctx.agent.config.max_upload_bytes, "the project"
        )
    except ValueError:
        raise CallFailed("bad_params", "the project index is not JSON") from None
    except transfer.TransferError as exc:
        raise failed(exc) from None
    if INI not in wanted:
        raise CallFailed("bad_project", f"the synced project has no {INI}")
    return wanted


@handler("project.sync")
async def project_sync(ctx: CallContext, project: str) -> dict[str, int]:
    """Make the agent's copy match the streamed index from cached blobs; delete what is gone."""
    check_remote_build(ctx)
    root = project_path(ctx, project)
    wanted = await _receive_index(ctx)
    async with in_use(ctx, root) as book:
        owner = client_id(ctx)
        held = book.ledger.items.get(f"project:{owner}/{project}")
        need = max(0, sync_size(wanted) - (held.size if held else 0))
        blobs = sorted({f"blob:{e.sha256}" for e in wanted.values()})
        # The blobs it is made from stay while it is made; its room is reserved first.
        with book.pinned_keys(blobs):
            async with book.reserve(owner, need, f"project {project[:12]}") as reserved:
                make_project_dir(ctx, root)
                result = await _sync_tree(ctx, root, wanted)
                await book.project_measured(owner, project, reserved)
    return result


async def _sync_tree(ctx: CallContext, root: Path, wanted: transfer.Index) -> dict[str, int]:
    delta = transfer.diff(wanted, _load_manifest(root))
    blobs = cache_dir(ctx)
    try:
        for e in delta.changed:
            if e.name == INI:
                text = read_client_ini(blobs, e.sha256)
                written = await agent_ini(ctx, text, root, local_paths=_tree_paths(wanted))
                gate.replace(text.encode(), root, (CLIENT_INI,))
                gate.replace(written.text.encode(), root, (INI,))
            else:
                cache.copy_to(blobs, e.sha256, root, gate.relpath(e.name))
    except transfer.TransferError as exc:
        raise failed(exc) from None
    for path in delta.removed:
        gate.remove(root, gate.relpath(path))
    gate.replace(json.dumps(transfer.index_to_json(wanted)).encode(), root, (MANIFEST,))
    return {"updated": len(delta.changed), "removed": len(delta.removed)}


async def checked_ini(ctx: CallContext, project_dir: Path, env: str) -> AgentIni:
    """One environment of the synced project's platformio.ini, read again before a build.

    The file written at sync leaves out environments it refused; this says why.
    """
    try:
        text = gate.read_text(project_dir, (CLIENT_INI,))
    except FileNotFoundError:
        raise CallFailed("not_synced", "sync the project (project.sync) before building") from None
    paths = _tree_paths(_load_manifest(project_dir))
    return await agent_ini(ctx, text, project_dir, [env], local_paths=paths)


def _tree_paths(index: transfer.Index) -> set[str]:
    """Every file and directory of the synced tree, relative: what a package spec must
    not name (PlatformIO would load a platform or library from it)."""
    paths: set[str] = set()
    for name in index:
        parts = name.split("/")
        paths.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return paths


async def build(ctx: CallContext, project_dir: Path, env: str, verbose: bool, silent: bool) -> int:
    """`pio run -e ENV` on the synced copy, in the sandbox, its output streamed to the client."""
    check_remote_build(ctx)
    pio = uploader.find_platformio()
    if pio is None:
        raise no_platformio(ctx)
    argv = [pio, "run", "-d", str(project_dir), "-e", env]
    argv += ["-v"] if verbose else ["-s"] if silent else []
    await ctx.call.send_event({"building": env, "argv": argv})
    async with in_use(ctx, project_dir):  # its build output counts against the quota
        return await run_sandboxed(ctx, f"the remote build of {env}", argv, project_dir)
