"""The boards a pytest session holds: found, leased, flashed once and forwarded.

Blocking code on ``pio_remote.sync``; the plugin (plugin.py) makes one ``Farm`` per
session and closes it at the end. Every failure a user can meet becomes a ``FarmError``
with one line naming the problem and the fix.
"""

from __future__ import annotations

import fnmatch
import socket
import threading
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pio_remote.client.api import PortBusyError, PortLeasedError, RemoteError
from pio_remote.home import ConfigError
from pio_remote.net.channel import ChannelClosed
from pio_remote.net.link import RelayError
from pio_remote.wire.invite import InviteError
from pio_remote.wire.serial_events import SerialSettings

# Serial output a failed test's report carries, per board.
TAIL_BYTES = 64 * 1024
GLOB_CHARS = set("*?[")
FARM_ERRORS = (RemoteError, RelayError, ChannelClosed, ConfigError, InviteError)


class FarmError(Exception):
    """One line for the user: what went wrong and what to do."""


@dataclass
class Wanted:
    """What the options ask for."""

    agents: list[str]
    ports: list[str]
    count: int = 1
    firmware: Path | None = None
    lease_ttl: float = 1800.0
    wait: float = 0.0
    baudrate: int = 115200
    # socket:// URLs (plain bytes at ``baudrate``) instead of rfc2217:// (plugin.py says when).
    raw: bool = False


@dataclass
class RemoteBoard:
    """One leased board: ``url`` for any pyserial tool, ``serial`` opened on first use."""

    agent: str
    port: str
    url: str
    lease: str
    firmware_sha256: str | None
    _session: Any = field(repr=False)
    baudrate: int = 115200
    _tail: bytearray = field(default_factory=bytearray, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _serial: Any = field(default=None, repr=False)

    @property
    def serial(self) -> Any:
        """A pyserial object on ``url``, opened on first use and closed with the session."""
        if self._serial is None:
            import serial

            self._serial = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=5)
        return self._serial

    def flash(self, path: str | Path) -> None:
        """Flash ``path`` now (even if the board has it already)."""
        self.firmware_sha256 = self._session.upload(path, self.port).sha256

    def reset(self) -> None:
        self._session.reset(self.port)

    def power_cycle(self) -> None:
        self._session.power(self.port, "cycle")

    def tail(self) -> bytes:
        """The last 64 KiB the board sent to a tool through ``url``."""
        with self._lock:
            return bytes(self._tail)

    def _keep(self, data: bytes) -> None:
        with self._lock:
            self._tail += data
            del self._tail[:-TAIL_BYTES]

    def _close(self) -> None:
        if self._serial is not None:
            self._serial.close()


def _matches(port: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(port, p) if GLOB_CHARS & set(p) else port == p for p in patterns)


class Farm:
    """Boards for one pytest session; ``close()`` releases everything it took."""

    def __init__(self, wanted: Wanted) -> None:
        self.wanted = wanted
        self.boards: list[RemoteBoard] = []
        self._stack = ExitStack()
        self._sessions: dict[str, Any] = {}
        self.flashed = 0  # boards flashed at start (the others had the image)

    def open(self) -> Farm:
        from pio_remote.sync import connect

        try:
            self._remote = self._stack.enter_context(connect())
            self._take_boards()
        except FARM_ERRORS as exc:
            self.close()
            raise FarmError(f"pio-remote: {exc}") from None
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for board in self.boards:
            board._close()
        self._stack.close()

    def _session(self, agent: str) -> Any:
        if agent not in self._sessions:
            self._sessions[agent] = self._stack.enter_context(self._remote.session(agent))
        return self._sessions[agent]

    def _candidates(self) -> list[tuple[Any, str]]:
        agents = self.wanted.agents or [a.agent for a in self._remote.agents()]
        if not agents:
            raise FarmError("pio-remote: no agent is online: start one, or check the relay")
        found = []
        for agent in agents:
            sess = self._session(agent)
            found += [(sess, p.port) for p in sess.ports() if _matches(p.port, self.wanted.ports)]
        if not found:
            raise FarmError(
                f"pio-remote: no port matching {' or '.join(self.wanted.ports)} on agent(s) "
                f"{', '.join(agents)}: see 'pio-remote device list'"
            )
        return found

    def _take_boards(self) -> None:
        """Lease free boards first; then wait (--pio-remote-wait) for busy ones in turn."""
        need = self.wanted.count
        left = self._candidates()
        why = ""
        for wait in (0.0, self.wanted.wait):
            for sess, port in list(left):
                if len(self.boards) == need:
                    return
                try:
                    self._take(sess, port, wait)
                    left.remove((sess, port))
                except (PortLeasedError, PortBusyError) as exc:
                    why = str(exc)
            if len(self.boards) == need or not self.wanted.wait:
                break
        if len(self.boards) < need:
            raise FarmError(
                f"pio-remote: {need} board(s) wanted, {len(self.boards)} free: {why}; "
                "wait for them with --pio-remote-wait SECONDS"
            )

    def _take(self, sess: Any, port: str, wait: float) -> None:
        note = f"pytest on {socket.gethostname()}"
        lease = sess.lease(port, self.wanted.lease_ttl, wait=wait, note=note)
        self._stack.callback(_unlock, sess, port)
        sha = None
        if self.wanted.firmware is not None:
            done = sess.upload(self.wanted.firmware, port, skip_unchanged=True)
            sha = done.sha256
            self.flashed += not done.skipped
        board = RemoteBoard(sess.agent_id, port, "", lease.id, sha, sess, self.wanted.baudrate)
        settings = SerialSettings(baudrate=self.wanted.baudrate)
        forward = sess.forward_serial(port, settings=settings, tap=board._keep, raw=self.wanted.raw)
        board.url = self._stack.enter_context(forward)
        self.boards.append(board)


def _unlock(sess: Any, port: str) -> None:
    try:
        sess.unlock(port)
    except FARM_ERRORS:
        pass  # the lease ends with its TTL
