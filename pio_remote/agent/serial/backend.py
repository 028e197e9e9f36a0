"""Which serial backend opens a port: ``fd`` (port.py) or ``thread`` (threadport.py).

``fd`` waits on the port's file descriptor in trio and needs no thread; it needs
POSIX (``fcntl``, ``termios``, and fds trio can poll). ``thread`` is pyserial in a
worker thread per port and runs wherever pyserial does (Windows, macOS, Linux).
The agent takes ``--serial-backend`` or agent.toml's ``serial_backend``, else
``fd`` where it can run and ``thread`` elsewhere.
"""

from __future__ import annotations

import os
from typing import Protocol

from pio_remote.agent.serial.threadport import ThreadSerialPort
from pio_remote.wire.serial_events import SerialSettings

BACKENDS = ("fd", "thread")


class Port(Protocol):
    """What the monitor and the test runner use of an open port, on either backend."""

    path: str
    settings: SerialSettings
    closed: bool
    has_modem_lines: bool

    async def read(self) -> bytes: ...
    def read_waiting(self, limit: int) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    def apply(self, new: SerialSettings) -> list[str]: ...
    def set_break(self, on: bool) -> list[str]: ...
    def purge(self, input: bool, output: bool) -> None: ...
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


def fd_available() -> bool:
    """Whether the fd backend can run here: POSIX, with fcntl and termios."""
    if os.name != "posix":
        return False
    try:
        import fcntl  # noqa: F401
        import termios  # noqa: F401
    except ImportError:
        return False
    return True


def choose(asked: str | None) -> str:
    """The backend to use for ``asked`` (None: the best one here); ValueError if it cannot run."""
    if asked is None:
        return "fd" if fd_available() else "thread"
    if asked not in BACKENDS:
        raise ValueError(f"serial backend must be one of {', '.join(BACKENDS)}, not {asked!r}")
    if asked == "fd" and not fd_available():
        raise ValueError("the fd serial backend needs POSIX (fcntl, termios): use 'thread'")
    return asked


async def open_port(
    backend: str | None, path: str, settings: SerialSettings
) -> tuple[Port, list[str]]:
    """Open ``path`` with ``backend`` (see ``choose``); the port and warnings for the user."""
    if choose(backend) == "thread":
        return await ThreadSerialPort.open(path, settings)
    from pio_remote.agent.serial.port import SerialPort  # POSIX only

    return await SerialPort.open(path, settings)
