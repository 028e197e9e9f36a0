"""Serial ports an agent offers: pyserial's list plus configured globs.

pyserial's ``list_ports`` never lists ptys or symlinks outside /dev, which is
exactly what virtual boards and tests use, so ``--port-glob`` adds them. A glob
matches logs and directories as well (``/tmp/vb/*``): only character devices,
and symlinks to them, are ports.
"""

from __future__ import annotations

import glob
import os
import stat

from serial.tools import list_ports


def list_devices(globs: list[str]) -> list[dict[str, str]]:
    """PlatformIO's shape: ``[{"port", "description", "hwid"}]``."""
    found: list[dict[str, str]] = []
    seen: set[str] = set()
    for info in sorted(list_ports.comports(), key=lambda p: p.device):
        found.append(
            {
                "port": info.device,
                "description": info.description or "n/a",
                "hwid": info.hwid or "n/a",
            }
        )
        seen.add(info.device)
    for pattern in globs:
        for path in sorted(glob.glob(os.path.expanduser(pattern))):
            if path in seen or not is_char_device(path):
                continue
            seen.add(path)
            found.append({"port": path, "description": _describe(path), "hwid": "n/a"})
    return found


def is_char_device(path: str) -> bool:
    """A serial port is a character device (a symlink is followed; a dangling one is not)."""
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def _describe(path: str) -> str:
    target = os.path.realpath(path)
    if target.startswith("/dev/pts/"):
        return f"pseudo-terminal {target}"
    return "n/a" if target == path else f"link to {target}"


def resolve(globs: list[str], port: str) -> str | None:
    """The listed port a client named, or None: clients only get ports we offer."""
    for dev in list_devices(globs):
        if dev["port"] == port:
            return port
    return None
