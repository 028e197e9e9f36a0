"""Who holds which serial port on this agent.

One owner per port: a second monitor gets ``PortBusy`` naming the holder
(the chosen policy; see docs/monitor.md). An upload takes the port exclusively:
it asks the port's monitor to pause (close the port), flashes, then lets the
monitor resume, the way PlatformIO pauses its monitor around an upload.

    async with ports.monitor("/dev/ttyACM0", "alice@desk") as lease:
        ...                                   # in a side task:
        await lease.pause_requested.wait()    # an upload wants the port
        close the port; lease.paused()
        await lease.resumed()                 # the upload is done; reopen

    async with ports.exclusive("/dev/ttyACM0", "upload by alice@desk"):
        flash...
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

# How long an upload waits for a monitor to let go of the port before it
# gives up: a monitor only has to close a file descriptor.
PAUSE_TIMEOUT = 5.0


class PortBusy(Exception):
    def __init__(self, port: str, holder: str, what: str):
        super().__init__(f"port {port} is in use: {what} by {holder}")
        self.port = port
        self.holder = holder


@dataclass
class MonitorLease:
    port: str
    holder: str
    pause_requested: trio.Event = field(default_factory=trio.Event)
    _paused: trio.Event = field(default_factory=trio.Event)
    _resume: trio.Event = field(default_factory=trio.Event)

    def paused(self) -> None:
        """The monitor closed the port; the upload may go ahead."""
        self._paused.set()

    async def resumed(self) -> None:
        """Wait until the upload is done, then re-arm for the next pause."""
        await self._resume.wait()
        self.pause_requested = trio.Event()
        self._paused = trio.Event()
        self._resume = trio.Event()


@dataclass
class _PortState:
    monitor: MonitorLease | None = None
    exclusive: str | None = None
    released: trio.Event = field(default_factory=trio.Event)


class PortRegistry:
    def __init__(self) -> None:
        self._ports: dict[str, _PortState] = {}

    def holders(self) -> dict[str, str]:
        out = {}
        for port, state in self._ports.items():
            if state.exclusive:
                out[port] = state.exclusive
            elif state.monitor:
                out[port] = state.monitor.holder
        return out

    def _state(self, port: str) -> _PortState:
        return self._ports.setdefault(port, _PortState())

    def _forget_if_idle(self, port: str) -> None:
        state = self._ports.get(port)
        if state and state.monitor is None and state.exclusive is None:
            del self._ports[port]

    @asynccontextmanager
    async def monitor(self, port: str, holder: str) -> AsyncIterator[MonitorLease]:
        state = self._state(port)
        if state.monitor is not None:
            raise PortBusy(port, state.monitor.holder, "monitored")
        if state.exclusive is not None:
            raise PortBusy(port, state.exclusive, "being flashed")
        lease = MonitorLease(port, holder)
        state.monitor = lease
        try:
            yield lease
        finally:
            state.monitor = None
            self._forget_if_idle(port)

    @asynccontextmanager
    async def exclusive(self, port: str, holder: str) -> AsyncIterator[None]:
        state = self._state(port)
        if state.exclusive is not None:
            raise PortBusy(port, state.exclusive, "being flashed")
        state.exclusive = holder
        lease = state.monitor
        try:
            if lease is not None:
                lease.pause_requested.set()
                with trio.move_on_after(PAUSE_TIMEOUT):
                    await lease._paused.wait()
                if not lease._paused.is_set() and state.monitor is lease:
                    raise PortBusy(port, lease.holder, "monitored, and it did not pause")
            yield
        finally:
            state.exclusive = None
            if lease is not None:
                lease._resume.set()
            self._forget_if_idle(port)
