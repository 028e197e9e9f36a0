"""Flashing a board: `upload.flash` lays out a job, picks the uploader and runs it.

    upload.flash   {port, env, source, files, ini, targets, ...}
                   -> {missing: [sha256]} if the cache lacks a file (nothing ran), else
                   -> DATA (uploader output as it comes), then {exit_code, uploader}
                   {port, env, project, targets}: build the synced project first

The files come from the cache (staging.py) or a synced project (projects.py).
Flashing hard-links blobs (read-only) into a fresh job directory laid out like
a PlatformIO project; a blob an uploader changed anyway is dropped from the
cache when the job ends, and the job directory is removed. The uploader's
``$UPLOAD_SPEED`` and ``$UPLOAD_FLAGS`` come from the options the agent read out
of the client's platformio.ini to write its own (iniwriter), which cannot read the
agent's environment.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pio_remote.agent import gate, lease_calls
from pio_remote.agent.handlers import CallContext, CallFailed, handler
from pio_remote.agent.jobs import cache, proctree, projects, staging, uploader
from pio_remote.agent.jobs.workspace import (
    agent_ini,
    cache_dir,
    client_config,
    failed,
    jobs_dir,
    read_client_ini,
    run_sandboxed,
    work_root,
)
from pio_remote.agent.serial.portlock import PortBusy
from pio_remote.project import INI, ProjectError
from pio_remote.wire import transfer

log = logging.getLogger(__name__)

# Files per flash: firmware, bootloader, partitions, EEPROM and FS images.
MAX_FLASH_FILES = 16
_TARGET = re.compile(r"^[A-Za-z0-9_]+$")
# The agent's own file in a job (workspace.py reads it after a crash): made before the
# client's files are placed, so a client file of that name is refused, never written to.
PGID_FILE = proctree.RECORD


@dataclass
class Layout:
    """What a flash runs on: the project dir, the firmware, the client's options."""

    project_dir: Path
    source: Path
    values: dict[str, str] | None = None  # the env's checked options: $UPLOAD_SPEED, ...
    client_command: str | None = None  # upload_command as the client sent it
    job_dir: Path | None = None  # removed when the flash ends
    synced: bool = False  # a client's synced project: PlatformIO runs its code (sandbox)
    source_sha256: str | None = None  # remembered per port once flashed (flash skipping)
    linked: list[cache.Stamp] = field(default_factory=list)


def _check_port(ctx: CallContext, port: str) -> gate.Port | None:
    """Clients flash only the serial devices this agent lists, or OTA hosts (gate.port)."""
    if not port:
        return None
    found = gate.offered_port(ctx.agent.config, port)
    if found is None:
        raise CallFailed(
            "unknown_port",
            f"port {port} is not offered by agent '{ctx.agent.agent_id}': see "
            "'pio-remote device list' for its ports",
        )
    return found


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
    if not all(_TARGET.match(t) for t in targets):
        raise CallFailed("bad_params", "targets must be PlatformIO target names")
    env = None if env is None else gate.env(env)
    checked = _check_port(ctx, port)
    layout: Layout | None = None
    try:
        if project is not None:
            if env is None:
                raise CallFailed("bad_params", "a project build needs an environment")
            layout, code = await _build_project(ctx, project, env, port, targets, verbose, silent)
            if layout is None:
                return {"exit_code": code, "uploader": "PlatformIO Core build on the agent"}
        else:
            if not targets:
                raise CallFailed("bad_params", "nothing to do: give a target such as upload")
            entries = _flash_entries(ctx, files or [], source)
            # Waits on purpose: the client sends this flash right behind the puts
            # of the blobs it needs, without waiting for their results.
            await ctx.channel.puts.settled([e.sha256 for e in entries] + ([ini] if ini else []))
            missing = _missing(ctx, entries, ini)
            if missing:
                return {"missing": missing}  # nothing ran: send these, then call again
            layout = Layout(Path(), Path())
            await _lay_out_job(ctx, layout, env, source, entries, ini)
        return await _flash(ctx, layout, checked, env, targets, verbose, silent)
    except (transfer.TransferError, ProjectError, uploader.UploaderError) as exc:
        raise failed(exc) from None
    finally:
        if layout is not None:
            cache.drop_modified(layout.linked)
            if layout.job_dir is not None:
                shutil.rmtree(layout.job_dir, ignore_errors=True)  # a few links: no thread


async def _build_project(
    ctx: CallContext,
    project: str,
    env: str,
    port: str,
    targets: list[str],
    verbose: bool,
    silent: bool,
) -> tuple[Layout | None, int]:
    """Build a synced project; its layout to flash, or None and the exit code to return."""
    project_dir = projects.project_path(ctx, project)
    sent = await projects.checked_ini(ctx, project_dir, env)
    command = sent.client_command(env)
    allow = uploader.client_commands_allowed(ctx.agent.config)
    if (
        targets
        and command is not None
        and not allow
        and uploader.matching_uploader(ctx.agent.config, port) is None
    ):
        raise uploader.refused_client_command(ctx.agent.agent_id, port)
    code = await projects.build(ctx, project_dir, env, verbose, silent)
    if code != 0 or not targets:
        return None, code
    # The file on disk is the agent's own (written at sync): no references, no paths.
    # The build ran the client's code with the project writable: read back only files.
    try:
        written = client_config(gate.read_text(project_dir, (INI,)), project_dir / INI)
    except FileNotFoundError:
        raise CallFailed("bad_project", f"the build removed {INI}") from None
    source = projects.checked_artifacts(project_dir, written, env).source
    return Layout(project_dir, source, sent.values[env], command, synced=True), 0


async def _flash(
    ctx: CallContext,
    layout: Layout,
    checked: gate.Port | None,
    env: str | None,
    targets: list[str],
    verbose: bool,
    silent: bool,
) -> dict[str, Any]:
    values = layout.values
    port = checked.name if checked else ""
    job = uploader.Job(
        agent_id=ctx.agent.agent_id,
        port=port,
        speed=values.get("upload_speed", "") if values is not None else "",
        source=layout.source,
        project_dir=layout.project_dir,
        env=env if values is not None else None,
        targets=targets,
        client_command=layout.client_command,
        upload_flags=_flags(values),
        verbose=verbose,
        silent=silent,
    )
    plan = uploader.choose(ctx.agent.config, job)
    await ctx.call.send_event({"uploader": plan.origin, "argv": plan.argv})
    log.info("upload to %s with %s: %s", port or "(auto)", plan.origin, plan.argv)
    pgid_file = layout.job_dir / PGID_FILE if layout.job_dir else None

    def started(pid: int) -> None:
        if pgid_file is not None:  # lets a later agent kill it if this one dies
            proctree.record(pgid_file, pid)  # no fsync: it matters only while we run

    async def run() -> int:
        if not (plan.client_code or layout.synced):
            return await uploader.run_streaming(plan.argv, plan.cwd, ctx.call.send, started)
        ota = checked is not None and not checked.device
        device = port if checked is not None and checked.device else None
        return await run_sandboxed(ctx, "the upload", plan.argv, plan.cwd, started, ota, device)

    try:
        if checked is not None:  # locked and leased under its canonical key
            async with ctx.agent.ports.exclusive(checked.key, f"upload by {ctx.channel.holder}"):
                # A flash that fails or is cancelled may leave half an image: forget the last.
                ctx.agent.flashed.pop(checked.key, None)
                code = await run()
        else:
            code = await run()
    except PortBusy as exc:
        raise lease_calls.busy_failure(ctx.agent, exc, can_wait=False) from None
    if checked is not None:
        if code == 0 and layout.source_sha256 and "upload" in targets:
            ctx.agent.flashed[checked.key] = layout.source_sha256
    return {"exit_code": code if code >= 0 else 128 - code, "uploader": plan.origin}


def _flags(values: dict[str, str] | None) -> list[str]:
    if values is None:
        return []
    try:
        return shlex.split(" ".join(values.get("upload_flags", "").splitlines()))
    except ValueError:
        return []


def _flash_entries(
    ctx: CallContext, files: list[dict[str, Any]], source: str
) -> list[transfer.FileEntry]:
    if not files or len(files) > MAX_FLASH_FILES:
        raise CallFailed("bad_params", f"give between 1 and {MAX_FLASH_FILES} files to flash")
    entries = staging.checked_entries(files, ctx.agent.config.max_upload_bytes)
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
            raise failed(exc) from None
    missing: list[str] = []
    for sha, size in wanted:
        present = (root / sha).is_file() if size < 0 else cache.has(root, sha, size)
        if not present and sha not in missing:
            missing.append(sha)
    return missing


async def _lay_out_job(
    ctx: CallContext,
    layout: Layout,
    env: str | None,
    source: str,
    entries: list[transfer.FileEntry],
    ini: str | None,
) -> None:
    """A PlatformIO-shaped job dir: the agent's platformio.ini and .pio/build/<env>/ files.

    The build directory is always the default one: the written file has no paths.
    """
    root = cache_dir(ctx)
    job_dir = jobs_dir(work_root(ctx)) / f"{os.getpid()}-{secrets.token_hex(8)}"
    job_dir.mkdir(parents=True, mode=0o700)
    layout.job_dir = layout.project_dir = job_dir
    (job_dir / PGID_FILE).touch(mode=0o600, exist_ok=False)
    build: tuple[str, ...] = ()
    if ini is not None:
        if env is None:
            raise CallFailed("bad_params", f"a {INI} needs an environment to flash")
        written = await agent_ini(ctx, read_client_ini(root, ini), job_dir, [env])
        layout.client_command = written.client_command(env)
        layout.values = written.values[env]
        gate.replace(written.text.encode(), job_dir, (INI,))
        build = (".pio", "build", env)  # the written file has no build_dir
    if not build and any(e.name == INI for e in entries):
        # At the job's root PlatformIO (or an owner's script running it) would read it.
        raise CallFailed(
            "bad_path", f"{INI} names the agent's own file in a job, which it never overwrites"
        )
    for e in entries:
        layout.linked.append(cache.link_to(root, e.sha256, job_dir, (*build, e.name)))
        if e.name == source:
            layout.source_sha256 = e.sha256
    layout.source = job_dir.joinpath(*build, source)
