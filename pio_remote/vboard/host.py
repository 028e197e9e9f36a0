"""Host-side plumbing for the board farm: inotify, raw ptys and the small state files.

These are the Linux details (ctypes calls, termios flags, atomic JSON) that both the
farm and the uploader rely on, kept apart from the board logic itself.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import struct
import tempfile
import termios
from pathlib import Path
from typing import Any

FIRMWARE_DIR = Path(__file__).resolve().parent / "firmware"
DEFAULT_FIRMWARE = FIRMWARE_DIR / "blink-v1.elf"


# Sent by the uploader after replacing a firmware file. Not SIGHUP: a farm started in a
# terminal should still exit and clean up when that terminal goes away.
RELOAD_SIGNAL = signal.SIGUSR1
# An uploader leaves this file in a board's home to ask for a reset even if the image
# it flashed is unchanged.
RESET_MARKER = "reset-requested"

IN_OPEN = 0x20
IN_CLOSE_WRITE = 0x08
IN_CLOSE_NOWRITE = 0x10
IN_IGNORED = 0x8000
_PR_SET_PDEATHSIG = 1
READ_CHUNK = 65536


def board_home(directory: Path, name: str) -> Path:
    """Per-board private directory (firmware, state, QEMU log), hidden next to the link."""
    return directory / f".{name}"


def run_dir() -> Path:
    """Where pts -> state.json pointers live, so an uploader given /dev/pts/N finds its board."""
    env = os.environ.get("PIO_REMOTE_VBOARD_RUNDIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / f"pio-remote-vboard-{os.getuid()}"


def registry_entry(pts: str) -> Path:
    """Pointer file for one pts node."""
    return run_dir() / f"pts-{Path(pts).name}.json"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON via temp file + rename so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def make_raw(fd: int) -> None:
    """Put a tty in raw mode so all 256 byte values pass unchanged in both directions."""
    attrs = termios.tcgetattr(fd)
    attrs[0] &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
        | termios.IXOFF
        | termios.IXANY
        | termios.INPCK
    )
    attrs[1] &= ~termios.OPOST
    attrs[2] = (attrs[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8 | termios.CREAD
    attrs[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    attrs[6][termios.VMIN] = 1
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def die_with_parent() -> None:
    """Runs in the QEMU child: get SIGKILLed if the farm dies without cleaning up."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Inotify:
    """Minimal ctypes wrapper over Linux inotify (no extra dependency needed)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd

    def add_watch(self, path: str, mask: int) -> int:
        """Watch ``path`` for the events in ``mask``; returns the watch descriptor."""
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch({path}): {os.strerror(err)}")
        return int(wd)

    async def read_events(self) -> list[tuple[int, int]]:
        """Wait for events and return them as (watch descriptor, mask) pairs."""
        import trio  # the farm's side only: uploaders import this module without trio

        await trio.lowlevel.wait_readable(self.fd)
        try:
            buf = os.read(self.fd, READ_CHUNK)
        except BlockingIOError:
            return []
        events = []
        pos = 0
        while pos + 16 <= len(buf):
            wd, mask, _cookie, name_len = struct.unpack_from("iIII", buf, pos)
            events.append((wd, mask))
            pos += 16 + name_len
        return events

    def close(self) -> None:
        """Release the inotify descriptor."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
