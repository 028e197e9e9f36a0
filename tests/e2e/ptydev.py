"""Quiet pty devices for monitor tests: ``python ptydev.py MODE LINK``.

MODE is ``echo`` (send back every byte, nothing else, unlike the demo board's
ticks) or ``flood`` (write as fast as the pty takes it). LINK becomes a
symlink to the pty's slave side and is removed on SIGTERM, which is how a test
"unplugs" a device; starting another at the same LINK plugs it back in.
"""

from __future__ import annotations

import os
import signal
import sys
import tty

FLOOD_BLOCK = bytes(range(256)) * 256  # 64 KiB


def main(mode: str, link: str) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)  # the agent reconfigures it anyway; raw until then
    tmp = f"{link}.tmp{os.getpid()}"
    os.symlink(os.ttyname(slave), tmp)
    os.replace(tmp, link)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"ptydev {mode} {link} -> {os.ttyname(slave)}", flush=True)
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
        else:
            raise SystemExit(f"unknown mode {mode!r}: use echo or flood")
    finally:
        if os.path.islink(link) and os.readlink(link) == os.ttyname(slave):
            os.unlink(link)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
