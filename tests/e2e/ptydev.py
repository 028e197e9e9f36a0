"""Quiet pty devices for monitor tests: ``python ptydev.py MODE LINK``.

MODE is ``echo`` (send back every byte, nothing else, unlike the demo board's
ticks), ``flood`` (write as fast as the pty takes it), ``banner`` (a board
that resets when its port is opened: each open of the port is followed, after
a short "boot", by ``boot N: ready`` lines, then it echoes), ``unity`` (a
``banner`` board running a Unity test image: a passing run follows each banner)
or ``counter`` (a
numbered line every 10 ms, ``open N`` on each open of the port, ``rx:TEXT``
for each line it receives; numbers go on while the port is closed, so lines
nobody could read show as gaps: see numbered.py). LINK becomes a
symlink to the pty's slave side and is removed on SIGTERM, which is how a test
"unplugs" a device; starting another at the same LINK plugs it back in.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
import tty

FLOOD_BLOCK = bytes(range(256)) * 256  # 64 KiB
BOOT_SECONDS = 0.05  # a reset board prints its banner this long after the open
UNITY_RUN = (
    b"test/test_main.c:7:test_add:PASS\r\n"
    b"test/test_main.c:8:test_sub:PASS\r\n"
    b"\r\n-----------------------\r\n2 Tests 0 Failures 0 Ignored\r\nOK\r\n"
)


def main(mode: str, link: str) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)  # the agent reconfigures it anyway; raw until then
    name = os.ttyname(slave)
    tmp = f"{link}.tmp{os.getpid()}"
    os.symlink(name, tmp)
    os.replace(tmp, link)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"ptydev {mode} {link} -> {name}", flush=True)
    try:
        if mode == "echo":
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    continue
                os.write(master, data)
        elif mode == "flood":
            while True:
                os.write(master, FLOOD_BLOCK)
        elif mode in ("banner", "unity"):
            os.close(slave)  # so that the master sees each open and close of the port
            banner_on_open(master, UNITY_RUN if mode == "unity" else b"")
        elif mode == "counter":
            os.close(slave)
            count_lines(master)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        if os.path.islink(link) and os.readlink(link) == name:
            os.unlink(link)


def banner_on_open(master: int, after: bytes = b"") -> None:
    """While nobody has the port open the master polls as hung up; an open ends that.
    ``after`` follows each banner."""
    poller = select.poll()
    poller.register(master, select.POLLIN)
    boots = 0
    was_open = False
    while True:
        # An open shows only as the absence of POLLHUP: look often while closed.
        events = dict(poller.poll(1000 if was_open else 5)).get(master, 0)
        is_open = not events & select.POLLHUP
        if is_open and not was_open:
            boots += 1
            time.sleep(BOOT_SECONDS)
            banner = b"boot %d: rst:0x1 (POWERON)\r\nboot %d: ready\r\n" % (boots, boots)
            os.write(master, banner + after)
        was_open = is_open
        if not is_open:
            time.sleep(0.005)  # hung up polls as ready at once: look again shortly
        elif events & select.POLLIN:
            try:
                os.write(master, os.read(master, 65536))
            except OSError:
                pass


def count_lines(master: int, tick: float = 0.010) -> None:
    poller = select.poll()
    poller.register(master, select.POLLIN)
    number, opens, was_open, received = 0, 0, False, b""
    due = time.monotonic()
    while True:
        wait = max(0.0, due - time.monotonic())
        events = dict(poller.poll(wait * 1000)).get(master, 0)
        is_open = not events & select.POLLHUP
        if is_open and not was_open:
            opens += 1
            os.write(master, b"open %d\n" % opens)
        was_open = is_open
        if is_open and events & select.POLLIN:
            try:
                received += os.read(master, 4096)
            except OSError:
                pass
            while b"\n" in received:
                line, received = received.split(b"\n", 1)
                os.write(master, b"rx:" + line.strip(b"\r") + b"\n")
        if not is_open:
            time.sleep(min(0.005, wait))  # hung up polls as ready at once
        if time.monotonic() >= due:
            if is_open:
                os.write(master, b"%08d\n" % number)
            number += 1
            due += tick


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
