"""What a monitor's ``receive()`` returns besides device bytes and the agent's notices.

Client-side events of the connection keeper (remote.py): the connection went and came
back, and what continuity could not save.
"""

from __future__ import annotations

from dataclasses import dataclass

from pio_remote.wire import serial_events as ev


@dataclass(frozen=True)
class ConnectionLost:
    """The relay or the session went away; the monitor reconnects after ``retry_in`` s."""

    reason: str
    retry_in: float


@dataclass(frozen=True)
class Reconnected:
    agent: str


@dataclass(frozen=True)
class OutputMissing:
    """The stream resumed, but this many bytes the board printed meanwhile were overwritten."""

    count: int


@dataclass(frozen=True)
class ResumeLost:
    """The agent no longer had the monitor (grace period over, agent restarted): a new one."""

    reason: str


@dataclass(frozen=True)
class InputDropped:
    """Bytes given to ``send()`` while disconnected, dropped rather than sent late."""

    count: int


Item = bytes | ev.Notice | ConnectionLost | Reconnected | OutputMissing | ResumeLost | InputDropped
