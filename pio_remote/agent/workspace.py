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
import signal
from pathlib import Path

from pio_remote import transfer
from pio_remote.agent import cache, uploader
from pio_remote.agent.disk import DiskBook
from pio_remote.agent.handlers import CallContext, CallFailed
from pio_remote.home import write_private
from pio_remote.project import INI, ProjectConfig, ProjectError, sanitize_ini

log = logging.getLogger(__name__)

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


def write_atomic(path: Path, text: str) -> None:
    """Replace a file in one step: a crash leaves the old file or the new, never half."""
    write_private(path, text.encode())


def read_client_ini(blobs: Path, sha256: str, allow: bool) -> tuple[str, str]:
    """The client's platformio.ini as sent, and the sanitized copy PlatformIO here may run."""
    try:
        text = (blobs / transfer.check_sha256(sha256)).read_text()
        clean, removed = sanitize_ini(text, allow)
    except FileNotFoundError:
        raise CallFailed("not_staged", f"{INI} is not on the agent: send it first") from None
    except (UnicodeDecodeError, ProjectError, transfer.TransferError) as exc:
        raise CallFailed("bad_project", f"{INI}: {exc}") from None
    if removed:
        log.info("removed from the client's %s: %s", INI, ", ".join(removed))
    return text, clean


def client_config(text: str, path: Path) -> ProjectConfig:
    """A client's platformio.ini as the agent reads it: no ``sysenv`` (see project.py)."""
    return ProjectConfig.parse(text, path, sysenv=None)


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
    """An uploader that outlived its agent (SIGKILL) still runs in the job dir: kill its group.

    Its group id was recorded when it started; it is killed only if that process
    still works in this job directory, so a recycled pid is left alone.
    """
    try:
        pgid = int((job / ".uploader-pgid").read_text())
        cwd = Path(os.readlink(f"/proc/{pgid}/cwd"))
    except (OSError, ValueError):
        return
    if cwd == job.resolve() or job.resolve() in cwd.parents:
        log.warning("killing uploader process group %d left behind in %s", pgid, job)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from a previous life with the same pid: certainly stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
