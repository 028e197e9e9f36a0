"""Agent calls for `pio-remote run`: stage files, sync projects, flash boards.

    upload.check   {files: [{name, size, sha256}]}      -> {missing: [sha256], max_upload_bytes}
    upload.put     {name, size, sha256} + DATA..., EOF  -> {received}
    upload.flash   {port, env, source, files, ini, targets, ...}
                   -> {missing: [sha256]} if the cache lacks a file (nothing ran), else
                   -> DATA (uploader output as it comes), then {exit_code, uploader}
    project.index  {project}        -> DATA: JSON {path: [size, sha256]}, EOF -> {files}
    project.sync   {project} + DATA: JSON index, EOF    -> {updated, removed}

Files land in a content-addressed cache (``<work>/cache/<sha256>``): a put is
checked against its SHA-256 while it streams into a temp file, and only a
file that matches is renamed into place, so an interrupted or corrupted
transfer leaves nothing behind. Flashing hard-links blobs (read-only) into
a fresh job directory laid out like a PlatformIO project; a blob an uploader
changed anyway is dropped from the cache when the job ends.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shlex
import shutil
from pathlib import Path
from typing import Any

import trio

from pio_remote import transfer
from pio_remote.agent import cache, ports, uploader
from pio_remote.agent.handlers import CallContext, CallFailed, handler
from pio_remote.agent.portlock import PortBusy
from pio_remote.project import INI, ProjectConfig, ProjectError, find_artifacts, sanitize_ini

log = logging.getLogger(__name__)

MANIFEST = ".pio-remote-manifest.json"
# The client's platformio.ini as sent: its upload_* options, never run by PlatformIO.
CLIENT_INI = ".pio-remote-client.ini"
PROJECT_ID = re.compile(r"^[0-9a-f]{16,64}$")
# Files per flash: firmware, bootloader, partitions, EEPROM and FS images.
MAX_FLASH_FILES = 16
# A project index as JSON: ~100 bytes per file, MAX_SYNC_FILES files.
MAX_INDEX_BYTES = 16 * 1024 * 1024


def work_root(ctx: CallContext) -> Path:
    return ctx.agent.working_dir or ctx.agent.home / "work"


def cache_dir(ctx: CallContext) -> Path:
    return cache.directory(work_root(ctx))


def _failed(exc: transfer.TransferError | ProjectError | uploader.UploaderError) -> CallFailed:
    return CallFailed(getattr(exc, "code", "bad_project"), str(exc))


def _entry(raw: object, limit: int) -> transfer.FileEntry:
    if not isinstance(raw, dict):
        raise CallFailed("bad_params", "each file must be {name, size, sha256}")
    try:
        name = transfer.check_file_name(raw.get("name"))
        size = transfer.check_size(raw.get("size"), limit, f"file {name}")
        return transfer.FileEntry(name, size, transfer.check_sha256(raw.get("sha256")))
    except transfer.TransferError as exc:
        raise _failed(exc) from None


def _checked_entries(files: list[dict[str, Any]], limit: int) -> list[transfer.FileEntry]:
    """Parse file entries and check each size and the total against the agent's limit."""
    entries = [_entry(f, limit) for f in files]
    try:
        transfer.check_size(sum(e.size for e in entries), limit, "the upload")
    except transfer.TransferError as exc:
        raise _failed(exc) from None
    return entries


@handler("upload.check")
async def upload_check(ctx: CallContext, files: list[dict[str, Any]]) -> dict[str, Any]:
    """Which of these blobs the agent lacks; checks every size before a byte is sent."""
    limit = ctx.agent.config.max_upload_bytes
    entries = _checked_entries(files, limit)
    root = cache_dir(ctx)
    missing = []
    for e in entries:
        if not cache.has(root, e.sha256, e.size) and e.sha256 not in missing:
            missing.append(e.sha256)
    return {"missing": missing, "max_upload_bytes": limit}


@handler("upload.put")
async def upload_put(ctx: CallContext, name: str, size: int, sha256: str) -> dict[str, int]:
    """Receive one file; it enters the cache only if its size and SHA-256 match."""
    limit = ctx.agent.config.max_upload_bytes
    entry = _entry({"name": name, "size": size, "sha256": sha256}, limit)
    root = cache_dir(ctx)
    receiver = transfer.Receiver(entry.name, entry.size, entry.sha256)
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
        os.replace(tmp, root / entry.sha256)
    except transfer.TransferError as exc:
        raise _failed(exc) from None
    finally:
        tmp.unlink(missing_ok=True)  # after a rename this is a no-op
    await trio.to_thread.run_sync(cache.evict, cache_dir(ctx), ctx.agent.config.max_upload_bytes)
    return {"received": receiver.received}


def _read_ini(root: Path, sha256: str, allow: bool) -> tuple[str, str]:
    """The client's platformio.ini as sent, and the copy PlatformIO here may run."""
    try:
        text = (root / transfer.check_sha256(sha256)).read_text()
        clean, removed = sanitize_ini(text, allow)
    except FileNotFoundError:
        raise CallFailed("not_staged", f"{INI} is not on the agent: send it first") from None
    except (UnicodeDecodeError, ProjectError, transfer.TransferError) as exc:
        raise CallFailed("bad_project", f"{INI}: {exc}") from None
    if removed:
        log.info("removed from the client's %s: %s", INI, ", ".join(removed))
    return text, clean


def _check_port(ctx: CallContext, port: str) -> None:
    """Clients flash only ports this agent offers, ports an uploader claims, or OTA hosts."""
    config = ctx.agent.config
    if not port or uploader.is_network_port(port):
        return
    if uploader.matching_uploader(config, port) or ports.resolve(config.port_globs, port):
        return
    raise CallFailed(
        "unknown_port",
        f"port {port} is not offered by agent '{ctx.agent.agent_id}': see "
        "'pio-remote device list' for its ports",
    )


@handler("upload.flash")
async def upload_flash(
    ctx: CallContext,
    port: str = "",
    env: str | None = None,
    source: str = "",
    files: list[dict[str, Any]] | None = None,
    ini: str | None = None,
    project: str | None = None,
    targets: list[str] | None = None,
    verbose: bool = False,
    silent: bool = False,
) -> dict[str, Any]:
    """Lay out the job, choose the uploader, lock the port and stream the uploader's output."""
    targets = ["upload"] if targets is None else targets
    if not all(isinstance(t, str) and re.match(r"^[A-Za-z0-9_]+$", t) for t in targets):
        raise CallFailed("bad_params", "targets must be PlatformIO target names")
    if env is not None and not re.match(r"^[A-Za-z0-9_.\-]+$", env):
        raise CallFailed("bad_params", f"{env!r} is not an environment name")
    _check_port(ctx, port)
    allow = uploader.client_commands_allowed(ctx.agent.config)
    job_dir: Path | None = None
    linked: list[cache.Stamp] = []
    try:
        if project is not None:
            project_dir = project_path(ctx, project)
            if env is None:
                raise CallFailed("bad_params", "a project build needs an environment")
            if not (project_dir / CLIENT_INI).is_file():
                raise CallFailed("not_synced", "sync the project (project.sync) before building")
            config = ProjectConfig.parse((project_dir / CLIENT_INI).read_text())
            if (
                targets
                and config.client_command(env) is not None
                and not allow
                and uploader.matching_uploader(ctx.agent.config, port) is None
            ):
                raise uploader.refused_client_command(ctx.agent.agent_id, port)
            code = await _build(ctx, project_dir, env, verbose, silent)
            if code != 0 or not targets:
                return {"exit_code": code, "uploader": "PlatformIO Core build on the agent"}
            source_path = find_artifacts(ProjectConfig.load(project_dir), env).source
        else:
            if not targets:
                raise CallFailed("bad_params", "nothing to do: give a target such as upload")
            entries = _flash_entries(ctx, files or [], source)
            missing = _missing(ctx, entries, ini)
            if missing:
                return {"missing": missing}  # nothing ran: send these, then call again
            job_dir = work_root(ctx) / "jobs" / secrets.token_hex(8)
            project_dir = job_dir
            config, source_path = _lay_out_job(
                ctx, job_dir, env, source, entries, ini, allow, linked
            )
        job = uploader.Job(
            agent_id=ctx.agent.agent_id,
            port=port,
            speed=(config.get(env, "upload_speed") or "") if config and env else "",
            source=source_path,
            project_dir=project_dir,
            env=env if config else None,
            targets=targets,
            client_command=config.client_command(env) if config and env else None,
            upload_flags=_flags(config, env),
            verbose=verbose,
            silent=silent,
        )
        plan = uploader.choose(ctx.agent.config, job)
        await ctx.call.send_event({"uploader": plan.origin, "argv": plan.argv})
        log.info("upload to %s with %s: %s", port or "(auto)", plan.origin, plan.argv)
        try:
            if port:
                async with ctx.agent.ports.exclusive(port, f"upload by {ctx.channel.holder}"):
                    code = await uploader.run_streaming(plan.argv, plan.cwd, ctx.call.send)
            else:
                code = await uploader.run_streaming(plan.argv, plan.cwd, ctx.call.send)
        except PortBusy as exc:
            raise CallFailed("port_busy", str(exc)) from None
        return {"exit_code": code if code >= 0 else 128 - code, "uploader": plan.origin}
    except (transfer.TransferError, ProjectError, uploader.UploaderError) as exc:
        raise _failed(exc) from None
    finally:
        cache.drop_modified(linked)
        if job_dir is not None:
            shutil.rmtree(job_dir, ignore_errors=True)  # a few links: no thread needed


def _flags(config: ProjectConfig | None, env: str | None) -> list[str]:
    if config is None or env is None:
        return []
    try:
        return shlex.split(" ".join((config.get(env, "upload_flags") or "").splitlines()))
    except ValueError:
        return []


def _flash_entries(
    ctx: CallContext, files: list[dict[str, Any]], source: str
) -> list[transfer.FileEntry]:
    if not files or len(files) > MAX_FLASH_FILES:
        raise CallFailed("bad_params", f"give between 1 and {MAX_FLASH_FILES} files to flash")
    entries = _checked_entries(files, ctx.agent.config.max_upload_bytes)
    names = [e.name for e in entries]
    if source not in names or len(set(names)) != len(names):
        raise CallFailed("bad_params", f"source {source!r} must be one of the distinct {names}")
    return entries


def _missing(ctx: CallContext, entries: list[transfer.FileEntry], ini: str | None) -> list[str]:
    """Blobs a flash needs that the cache lacks (the client sends them and asks again)."""
    root = cache_dir(ctx)
    wanted = [(e.sha256, e.size) for e in entries]
    if ini is not None:
        try:
            wanted.append((transfer.check_sha256(ini), -1))
        except transfer.TransferError as exc:
            raise _failed(exc) from None
    missing: list[str] = []
    for sha, size in wanted:
        present = (root / sha).is_file() if size < 0 else cache.has(root, sha, size)
        if not present and sha not in missing:
            missing.append(sha)
    return missing


def _lay_out_job(
    ctx: CallContext,
    job_dir: Path,
    env: str | None,
    source: str,
    entries: list[transfer.FileEntry],
    ini: str | None,
    allow: bool,
    linked: list[cache.Stamp],
) -> tuple[ProjectConfig | None, Path]:
    """A PlatformIO-shaped job dir: sanitized platformio.ini and .pio/build/<env>/ files.

    Returns the client's own config (for its upload_* options) and the firmware path.
    """
    root = cache_dir(ctx)
    config = None
    build = job_dir
    if ini is not None:
        text, clean = _read_ini(root, ini, allow)
        config = ProjectConfig.parse(text, job_dir / INI)
        job_dir.mkdir(parents=True, mode=0o700)
        (job_dir / INI).write_text(clean)
        if env is not None:
            build = ProjectConfig.parse(clean, job_dir / INI).build_dir(env)
    for e in entries:
        linked.append(cache.link_to(root, e.sha256, build / e.name))
    return config, build / source


async def _build(ctx: CallContext, project_dir: Path, env: str, verbose: bool, silent: bool) -> int:
    pio = uploader.find_platformio()
    if pio is None:
        raise no_platformio(ctx)
    argv = [pio, "run", "-d", str(project_dir), "-e", env]
    argv += ["-v"] if verbose else ["-s"] if silent else []
    await ctx.call.send_event({"building": env, "argv": argv})
    code = await uploader.run_streaming(argv, project_dir, ctx.call.send)
    return code if code >= 0 else 128 - code


def no_platformio(ctx: CallContext) -> CallFailed:
    return CallFailed(
        "no_platformio",
        f"agent '{ctx.agent.agent_id}' has no PlatformIO Core, which -r/--force-remote needs "
        "to build there: install it on the agent ('pip install platformio'), or build "
        "locally and run without -r",
    )


# ---- project sync (-r) ---------------------------------------------------------------


def project_path(ctx: CallContext, project: str) -> Path:
    """Each client key gets its own tree, so clients never see or clobber each other's."""
    if not isinstance(project, str) or not PROJECT_ID.match(project):
        raise CallFailed("bad_params", "project must be 16 to 64 lowercase hex digits")
    owner = ctx.channel.client_key.hex()[:16]
    path = work_root(ctx) / "projects" / owner / project
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _load_manifest(root: Path) -> transfer.Index:
    try:
        index = transfer.index_from_json(json.loads((root / MANIFEST).read_text()))
    except (FileNotFoundError, ValueError, transfer.TransferError):
        return {}
    return {p: e for p, e in index.items() if (root / p).is_file()}


@handler("project.index")
async def project_index(ctx: CallContext, project: str) -> dict[str, int]:
    """The agent's copy of a project, as a hash index; fails early without PlatformIO."""
    if uploader.find_platformio() is None:
        raise no_platformio(ctx)
    index = _load_manifest(project_path(ctx, project))
    await ctx.call.send(json.dumps(transfer.index_to_json(index)).encode())
    await ctx.call.send_eof()
    return {"files": len(index)}


@handler("project.sync")
async def project_sync(ctx: CallContext, project: str) -> dict[str, int]:
    """Make the agent's copy match the streamed index from cached blobs; delete what is gone."""
    root = project_path(ctx, project)
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
        raise _failed(exc) from None
    if INI not in wanted:
        raise CallFailed("bad_project", f"the synced project has no {INI}")
    current = _load_manifest(root)
    delta = transfer.diff(wanted, current)
    blobs = cache_dir(ctx)
    allow = uploader.client_commands_allowed(ctx.agent.config)
    try:
        for e in delta.changed:
            dest = root / e.name
            _refuse_symlinks(root, dest)
            if e.name == INI:
                text, clean = _read_ini(blobs, e.sha256, allow)
                (root / CLIENT_INI).write_text(text)
                (root / INI).write_text(clean)
            else:
                cache.copy_to(blobs, e.sha256, dest)
    except transfer.TransferError as exc:
        raise _failed(exc) from None
    for path in delta.removed:
        (root / path).unlink(missing_ok=True)
    (root / MANIFEST).write_text(json.dumps(transfer.index_to_json(wanted)))
    return {"updated": len(delta.changed), "removed": len(delta.removed)}


def _refuse_symlinks(root: Path, dest: Path) -> None:
    """Synced trees hold only regular files; a symlink on the way means tampering."""
    p = dest.parent
    while p != root and root in p.parents:
        if p.is_symlink():
            raise CallFailed("bad_project", f"{p} is a symlink in the synced project")
        p = p.parent
