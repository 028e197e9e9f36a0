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
from collections.abc import Iterable

from serial.tools import list_ports

from pio_remote.agent.config import AgentConfig


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


def offered_globs(config: AgentConfig) -> list[str]:
    """``port_glob``, then the ``[[uploader]]`` globs that are paths: a device an
    uploader claims is offered (``ports = "/dev/serial/by-id/*"``) without repeating it."""
    found = list(config.port_globs)
    for up in config.uploaders:
        found += [g for g in up.ports if g.startswith("/") and g not in found]
    return found


def offered(config: AgentConfig) -> list[str]:
    """The names of the serial devices this agent lists (``device list``)."""
    return [dev["port"] for dev in list_devices(offered_globs(config))]


def device_keys(listed: Iterable[str]) -> dict[str, str]:
    """Each listed device's key: the first listed name of the same device (symlinks
    resolved), so that two listed names of one board share one lease and one lock."""
    first: dict[str, str] = {}
    keys = {}
    for dev in listed:
        keys[dev] = first.setdefault(os.path.realpath(dev), dev)
    return keys
