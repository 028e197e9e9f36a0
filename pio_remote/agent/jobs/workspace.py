"""Where the agent keeps uploads on disk, and what every upload call shares.

    <work>/cache/<sha256>                 verified blobs (cache.py, staging.py)
    <work>/jobs/<agent pid>-<random>/     one per flash, removed after it (upload.py)
    <work>/projects/<client>/<project>/   synced trees for -r (projects.py)
    <work>/cache-owners                   which client key sent each blob (disk.py)

``<work>`` is ``agent start -d DIR``, else ``<home>/work``. A job directory carries
the agent's pid, so an agent that starts after another one died (SIGKILL, power
loss) removes what that one left, and never touches the jobs of an agent that
still runs on the same working directory.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

import trio

from pio_remote.agent.disk import DiskBook
from pio_remote.agent.handlers import CallContext, CallFailed
from pio_remote.agent.jobs import cache, proctree, sandbox, uploader
from pio_remote.agent.jobs.iniexpand import IniError
from pio_remote.agent.jobs.iniwriter import MAX_INI_CHARS, AgentIni, write_agent_ini
from pio_remote.project import INI, ProjectConfig, ProjectError
from pio_remote.wire import transfer

log = logging.getLogger(__name__)

# Writing the agent's platformio.ini runs in a worker thread, a few at a time, under a
# deadline: a client's file can never hold up the event loop (other clients' calls).
INI_DEADLINE = 5.0
_INI_LIMITER = trio.CapacityLimiter(2)

_JOB_NAME = re.compile(r"^(\d+)-[0-9a-f]+$")
_PUT_NAME = re.compile(r"^\.put-(\d+)-[0-9a-f]+\.tmp$")


def work_root(ctx: CallContext) -> Path:
    return ctx.agent.working_dir or ctx.agent.home / "work"


def cache_dir(ctx: CallContext) -> Path:
    return cache.directory(work_root(ctx))


def client_id(ctx: CallContext) -> str:
    """Whom the disk budget charges: the client's authenticated Noise static key."""
    return ctx.channel.client_key.hex()[:16]


async def disk_book(ctx: CallContext) -> DiskBook:
    """The agent's disk budget (quota per client key, cap for the agent), loaded once."""
    agent = ctx.agent
    if agent.disk is None:
        config = agent.config
        agent.disk = DiskBook(
            work_root(ctx), config.client_disk_quota_bytes, config.agent_disk_cap_bytes
        )
    return await agent.disk.ready()


def jobs_dir(work: Path) -> Path:
    return work / "jobs"


def failed(exc: transfer.TransferError | ProjectError | uploader.UploaderError) -> CallFailed:
    return CallFailed(getattr(exc, "code", "bad_project"), str(exc))


def read_client_ini(blobs: Path, sha256: str) -> str:
    """The client's platformio.ini as sent, from the cache."""
    try:
        path = blobs / transfer.check_sha256(sha256)
        if path.stat().st_size > MAX_INI_CHARS * 4:  # UTF-8: the writer counts characters
            raise CallFailed("bad_project", f"{INI} is larger than a real one: not read")
        return path.read_text()
    except FileNotFoundError:
        raise CallFailed("not_staged", f"{INI} is not on the agent: send it first") from None
    except (UnicodeDecodeError, transfer.TransferError) as exc:
        raise CallFailed("bad_project", f"{INI}: {exc}") from None


def platformio_dirs(project_dir: Path) -> dict[str, str]:
    """``${platformio.*_dir}`` as PlatformIO here sees them for the file the agent writes
    (which sets no directory: every one is PlatformIO's default)."""
    core = Path(os.environ.get("PLATFORMIO_CORE_DIR") or Path.home() / ".platformio")
    work = project_dir / ".pio"
    dirs = {"core_dir": core, "packages_dir": core / "packages"}
    dirs |= {"platforms_dir": core / "platforms", "workspace_dir": work}
    dirs |= {"build_dir": work / "build", "libdeps_dir": work / "libdeps"}
    for name in ("src", "include", "lib", "test", "data", "boards", "monitor", "shared"):
        dirs[f"{name}_dir"] = project_dir / name
    return {k: str(v) for k, v in dirs.items()}


async def agent_ini(
    ctx: CallContext,
    text: str,
    project_dir: Path,
    envs: Iterable[str] | None = None,
    local_paths: Collection[str] = (),
) -> AgentIni:
    """The platformio.ini PlatformIO here runs (iniwriter), written off the event loop.

    The expansion has its own budget; the deadline is for everything else a slow
    machine might add. A thread cannot be stopped, but the call stops waiting for it.
    """
    allow = uploader.client_commands_allowed(ctx.agent.config)
    dirs = platformio_dirs(project_dir)

    def write() -> AgentIni:
        return write_agent_ini(
            text, allow_client_commands=allow, envs=envs, local_paths=local_paths, dirs=dirs
        )

    try:
        with trio.fail_after(INI_DEADLINE):
            result = await trio.to_thread.run_sync(
                write, limiter=_INI_LIMITER, abandon_on_cancel=True
            )
    except trio.TooSlowError:
        raise CallFailed(
            "bad_project", f"{INI}: not read within {INI_DEADLINE:g} s; simplify it"
        ) from None
    except IniError as exc:
        raise CallFailed("bad_project", f"{INI}: {exc}") from None
    if result.left_out:
        log.info("left out of the client's %s: %s", INI, ascii(", ".join(result.left_out)))
    return result


def client_config(text: str, path: Path) -> ProjectConfig:
    """A client's platformio.ini as the agent reads it: no ``sysenv`` (see project.py)."""
    return ProjectConfig.parse(text, path, sysenv=None)


def check_remote_build(ctx: CallContext) -> None:
    """`run -r` / `test -r` only if the owner allowed them and the sandbox is there."""
    try:
        sandbox.check_remote_build(ctx.agent.config, ctx.agent.agent_id)
    except sandbox.SandboxRefused as exc:
        raise CallFailed(exc.code, str(exc)) from None


async def run_sandboxed(
    ctx: CallContext,
    what: str,
    argv: list[str],
    job_dir: Path,
    started: Callable[[int], None] | None = None,
    network: bool = False,
    device: str | None = None,
) -> int:
    """Run the client's code (a build, an upload_command) in the sandbox, under the limits."""
    config = ctx.agent.config
    state = [ctx.agent.home, work_root(ctx)]
    try:
        wrapped = sandbox.wrap(config, ctx.agent.agent_id, state, job_dir, argv, network, device)
        offline = wrapped is not argv and not network  # in bwrap, without the network
        code = await sandbox.run_job(
            config, what, wrapped, job_dir, ctx.call.send, started, offline
        )
    except sandbox.SandboxRefused as exc:
        raise CallFailed(exc.code, str(exc)) from None
    return code if code >= 0 else 128 - code


def no_platformio(ctx: CallContext) -> CallFailed:
    return CallFailed(
        "no_platformio",
        f"agent '{ctx.agent.agent_id}' has no PlatformIO Core, which -r/--force-remote needs "
        "to build there: install it on the agent ('pip install platformio'), or build "
        "locally and run without -r",
    )


def remove_stale_jobs(work: Path) -> list[str]:
    """Job directories and cache temp files of agents that are gone; returns their names."""
    removed = []
    jobs = jobs_dir(work)
    for path in jobs.iterdir() if jobs.is_dir() else []:
        m = _JOB_NAME.match(path.name)
        if m and _alive(int(m[1])):
            continue
        _kill_orphan_uploader(path)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    blobs = work / "cache"
    for path in blobs.glob(".put-*.tmp") if blobs.is_dir() else []:
        m = _PUT_NAME.match(path.name)
        if m and _alive(int(m[1])):
            continue
        path.unlink(missing_ok=True)  # a put cut short by its agent's death
        removed.append(path.name)
    if removed:
        log.info("removed %d stale upload job(s) and temp file(s) from %s", len(removed), work)
    return removed


def _kill_orphan_uploader(job: Path) -> None:
    """An uploader that outlived its agent (SIGKILL) may still run: kill it (proctree.py)."""
    proctree.kill_recorded(job / proctree.RECORD)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from a previous life with the same pid: certainly stale
    return proctree.alive(pid)
