"""A demo board on a pty: prints a banner and a counter, and echoes what it gets.

It stands in for real hardware in `pio-remote quickstart` and in tests, where
QEMU boards are not needed. ``python -m pio_remote.vboard.demo_board LINK`` creates
a pty, points the symlink LINK at it, and runs until killed.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
import tty

BANNER = b"pio-remote demo board ready\r\n"
TICK_SECONDS = 2.0


def run(link: str) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no CR/LF translation: every byte value passes
    os.makedirs(os.path.dirname(link) or ".", exist_ok=True)
    tmp = f"{link}.tmp{os.getpid()}"
    os.symlink(os.ttyname(slave), tmp)
    os.replace(tmp, link)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"demo board {link} -> {os.ttyname(slave)}", flush=True)
    counter = 0
    next_tick = time.monotonic()
    try:
        os.write(master, BANNER)
        while True:
            timeout = max(0.0, next_tick - time.monotonic())
            ready, _, _ = select.select([master], [], [], timeout)
            if ready:
                try:
                    data = os.read(master, 4096)
                except OSError:
                    data = b""
                if data:
                    os.write(master, data)
            if time.monotonic() >= next_tick:
                next_tick += TICK_SECONDS
                counter += 1
                try:
                    os.write(master, b"tick %d\r\n" % counter)
                except BlockingIOError:
                    pass
    finally:
        if os.path.islink(link):
            os.unlink(link)


if __name__ == "__main__":
    run(sys.argv[1])
