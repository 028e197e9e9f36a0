"""A test's stand-in for uhubctl: ``python powerswitch.py on|off LINK [MODE]``.

``on`` starts a ``ptydev.py MODE`` board (``banner`` unless named) at LINK in a session
of its own (so the agent's kill of the command's process group leaves it running) and
returns once LINK exists;
``off`` stops it (LINK goes away, as a USB device's node does) and returns once it is
gone. ``on`` on a running board and ``off`` on a stopped one do nothing, as a hub does.
Every call is appended to LINK.calls, so a test can see what the agent ran.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PTYDEV = Path(__file__).with_name("ptydev.py")
WAIT = 10.0


def _running(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _until(check: object, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            sys.exit(f"powerswitch: {what} did not happen within {WAIT:g} s")
        time.sleep(0.01)


def main(action: str, link: str, mode: str = "banner") -> None:
    path = Path(link)
    pid_file = path.with_name(path.name + ".pid")
    with open(path.with_name(path.name + ".calls"), "a") as log:
        log.write(f"{action} {link}\n")
    pid = _running(pid_file)
    if action == "on" and pid is None:
        with open(path.with_name(path.name + ".log"), "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, str(PTYDEV), mode, link],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        pid_file.write_text(str(proc.pid))
        _until(path.exists, f"board {link} appearing")
    elif action == "off" and pid is not None:
        os.kill(pid, signal.SIGTERM)
        _until(lambda: _running(pid_file) is None and not path.is_symlink(), f"{link} off")
        pid_file.unlink()
    elif action not in ("on", "off"):
        sys.exit(f"powerswitch: unknown action {action!r}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
