"""Serial ports an agent offers: pyserial's list plus configured globs.

pyserial's ``list_ports`` never lists ptys or symlinks outside /dev, which is
exactly what virtual boards and tests use, so ``--port-glob`` adds them.
"""

from __future__ import annotations

import glob
import os

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
            if path in seen or os.path.isdir(path):
                continue
            seen.add(path)
            found.append({"port": path, "description": _describe(path), "hwid": "n/a"})
    return found


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
