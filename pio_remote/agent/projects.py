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
from pathlib import Path

from pio_remote import transfer
from pio_remote.agent import cache, gate, uploader
from pio_remote.agent.handlers import CallContext, CallFailed, handler
from pio_remote.agent.iniwriter import AgentIni
from pio_remote.agent.workspace import (
    agent_ini,
    cache_dir,
    check_remote_build,
    failed,
    no_platformio,
    read_client_ini,
    run_sandboxed,
    work_root,
)
from pio_remote.project import INI, Artifacts, ProjectConfig, find_artifacts

MANIFEST = ".pio-remote-manifest.json"
# The client's platformio.ini as sent: its upload_* options, never run by PlatformIO.
CLIENT_INI = ".pio-remote-client.ini"
# A project index as JSON: ~100 bytes per file, MAX_SYNC_FILES files.
MAX_INDEX_BYTES = 16 * 1024 * 1024


def project_path(ctx: CallContext, project: str) -> Path:
    """Each client key gets its own tree, so clients never see or clobber each other's."""
    parts = ("projects", ctx.channel.client_key.hex()[:16], gate.project_id(project))
    work = work_root(ctx)
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(gate.open_dir(work, parts, create=True))  # made, and no symlink on the way
    return work.joinpath(*parts)


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


async def _receive_index(ctx: CallContext) -> transfer.Index:
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
    return await run_sandboxed(ctx, f"the remote build of {env}", argv, project_dir)
