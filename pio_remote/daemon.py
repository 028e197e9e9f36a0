"""What a long-running process (relay, agent) owes its service manager.

``notify`` speaks systemd's readiness protocol: one datagram such as ``READY=1`` to the
socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). It is
small enough to write here rather than add a dependency, and it never raises: a unit
that is not ``Type=notify`` simply has no socket.

``setup_logging`` gives journald one line per event on stderr and no colour, so that
``journalctl -u`` shows each event whole and a multi-line traceback stays one entry.

Imports only the standard library: the relay uses it too.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

ENV_SOCKET = "NOTIFY_SOCKET"


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to the service manager; False when there is none."""
    path = os.environ.get(ENV_SOCKET)
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (zombies and other users' included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _same_stream(a: object, b: object) -> bool:
    """Whether two open files are one destination (one terminal, one journald stream)."""
    try:
        sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def say_ready(line: str) -> None:
    """The ready line on stdout, for the scripts that wait for it (``relay listening on``).

    The log on stderr says the same: where stdout and stderr are one stream (a
    terminal, journald, ``2>&1``) the line would be there twice, so the log's is enough.
    """
    if not _same_stream(sys.stdout, sys.stderr):
        print(line, flush=True)


class OneLineFormatter(logging.Formatter):
    """Every record on one line: newlines in messages and tracebacks become `` | ``."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", "").replace("\n", " | ")


def setup_logging(level: str, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
    """Log to stderr, one line per event; under systemd, leave the timestamp to journald."""
    if os.environ.get("JOURNAL_STREAM") and not sys.stderr.isatty():
        fmt = fmt.replace("%(asctime)s ", "")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
