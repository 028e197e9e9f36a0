"""An uploader's processes, with what each OS offers, and finding them after a crash.

POSIX: the uploader leads a process group of its own (``start_new_session``); TERM
and KILL go to the group, so whatever it started goes with it. Windows: it starts
with ``CREATE_NEW_PROCESS_GROUP``; CTRL_BREAK asks the group to stop, then the tree
below the leader (psutil) is killed.

An agent that dies (SIGKILL, power loss) leaves its uploaders running. Each job
records its uploader's pid and start time (``record``); the next agent kills what
still runs with that pid *and* start time (``kill_recorded``), so a recycled pid is
left alone. Start times come from /proc where it exists (Linux, no dependency: the
32-bit ARM archives carry no psutil), else from psutil (macOS, Windows). When
neither can say, the orphan is named in the log instead of being silently kept.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from pio_remote.daemon import pid_alive

log = logging.getLogger(__name__)

WINDOWS = os.name == "nt"
# In a job directory: the uploader's pid and start time (``record``).
RECORD = ".uploader-pgid"
# /proc/<pid>/stat; a module attribute so the tests can take it away, as on macOS.
PROC = Path("/proc")
# Start times from /proc and from psutil are both seconds since the epoch, rounded
# differently; a pid reused within this window is not told apart (it cannot be, fast).
SAME_START = 0.5


class Unknowable(Exception):
    """Neither /proc nor psutil can say whether a process is the one recorded."""


def popen_options() -> dict[str, Any]:
    """``open_process`` keywords that put the command in a group of its own."""
    if WINDOWS:
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}  # type: ignore[attr-defined]
    return {"start_new_session": True}


def stop(pid: int) -> None:
    """Ask the group led by ``pid`` to stop (SIGTERM; CTRL_BREAK on Windows)."""
    sig = signal.CTRL_BREAK_EVENT if WINDOWS else signal.SIGTERM  # type: ignore[attr-defined]
    _signal_group(pid, sig)


def kill(pid: int, tree: list[Any] | None = None) -> None:
    """Kill the group led by ``pid`` (on Windows: ``tree``, from ``snapshot``)."""
    if not WINDOWS:
        _signal_group(pid, signal.SIGKILL)
        return
    for proc in tree or []:
        try:
            proc.kill()
        except Exception:  # psutil.Error: gone meanwhile, or not ours to kill
            pass


def snapshot(pid: int) -> list[Any]:
    """Windows: the leader and its descendants, taken while the leader lives (a dead
    leader's children can no longer be found from it). POSIX: not needed, []."""
    if not WINDOWS:
        return []
    import psutil

    try:
        leader = psutil.Process(pid)
        return [leader, *leader.children(recursive=True)]
    except psutil.Error:
        return []


def _signal_group(pid: int, sig: int) -> None:
    try:
        if WINDOWS:
            os.kill(pid, sig)
        else:
            os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError, OSError):
        pass


# ---- after a crash -------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (on Windows ``os.kill(pid, 0)`` would kill it)."""
    if WINDOWS:
        import psutil

        return bool(psutil.pid_exists(pid))
    return pid_alive(pid)


def start_time(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch); None if no such process runs.

    Raises ``Unknowable`` where neither /proc nor psutil is there to ask.
    """
    stat = PROC / str(pid) / "stat"
    if PROC.is_dir():
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            return None
        except (OSError, IndexError) as exc:
            raise Unknowable(f"cannot read {stat}: {exc}") from None
        ticks = int(fields[19])  # proc(5) field 22, starttime: 20th after "(comm)"
        return _boot_time() + ticks / os.sysconf("SC_CLK_TCK")
    try:
        import psutil
    except ImportError:
        raise Unknowable("this system has no /proc, and psutil is not installed") from None
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None
    except psutil.Error as exc:
        raise Unknowable(f"psutil cannot read process {pid}: {exc}") from None


def _boot_time() -> float:
    for line in (PROC / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise Unknowable(f"{PROC / 'stat'} has no btime line")


def record(path: Path, pid: int) -> None:
    """Write what ``kill_recorded`` needs to find this uploader after the agent died."""
    try:
        started = start_time(pid)
    except Unknowable as exc:
        log.warning("uploader %d: its start time is unknown (%s); if this agent dies, "
                    "the next one cannot tell it from another process", pid, exc)  # fmt: skip
        started = None
    path.write_text(json.dumps({"pid": pid, "started": started}))  # no fsync: see flash.py


def kill_recorded(path: Path) -> bool:
    """Kill the uploader ``path`` records if it still runs; whether one was killed.

    Nothing recorded (the job never started one) is no error. A process that runs
    with the pid but started at another time is someone else's, and is left alone.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return False
    if not text.strip():
        return False  # reserved when the job was made; no uploader started
    try:
        entry = json.loads(text)
        pid, started = int(entry["pid"]), entry["started"]
    except (ValueError, KeyError, TypeError):
        log.warning("%s is damaged (%r): an uploader it names is not looked for", path, text[:80])
        return False
    try:
        now = start_time(pid)
    except Unknowable as exc:
        log.warning("cannot tell whether uploader %d left in %s still runs: %s; "
                    "kill it by hand if it does", pid, path.parent, exc)  # fmt: skip
        return False
    if now is None:
        return False
    if started is None or abs(now - float(started)) > SAME_START:
        log.info("pid %d of %s now belongs to another process: left alone", pid, path.parent)
        return False
    log.warning("killing uploader %d (and its process group) left behind in %s", pid, path.parent)
    tree = snapshot(pid)
    kill(pid, tree)
    return True
