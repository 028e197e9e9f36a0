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

    async with ports.exclusive("/dev/ttyACM0", "an upload by alice@desk"):
        flash...

Both also respect device leases (leases.py): a port leased to another client,
or to this client under a lease id the call did not present, is refused with
the holder and the expiry. ``CALLER`` says who the running call is; the agent
sets it for each call (service.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import trio

from pio_remote.agent.leases import Lease, LeaseBook, when

# How long an upload waits for a monitor to let go of the port before it
# gives up: a monitor only has to close a file descriptor.
PAUSE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Caller:
    """Who runs the current call: the client key, and the lease ids its session presented."""

    key: str
    presented: set[str] = field(default_factory=set)


CALLER: ContextVar[Caller | None] = ContextVar("pio_remote_caller", default=None)


class PortBusy(Exception):
    """A port someone else has: ``what`` says how ("monitored by alice (client key ...)",
    "an upload by ...", "a debug session through HOST:PORT by ..."); ``lease`` is set
    when a device lease keeps the caller off it."""

    def __init__(
        self,
        port: str,
        holder: str,
        what: str,
        lease: Lease | None = None,
        *,
        monitored: bool = False,
    ) -> None:
        super().__init__(f"port {port} is in use: {what}")
        self.port = port
        self.holder = holder
        self.lease = lease
        self.monitored = monitored  # by another monitor (one per port)


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
        """Wait until the upload is done (``resume``), then re-arm that wake-up."""
        await self._resume.wait()
        self._resume = trio.Event()

    def resume(self) -> None:
        """The upload is done. The next pause is armed here, in the same step: an
        upload that comes before the monitor task runs again must find fresh
        events (not this pause's, already set), and so wait for its own pause."""
        self.pause_requested = trio.Event()
        self._paused = trio.Event()
        self._resume.set()


@dataclass
class _PortState:
    monitor: MonitorLease | None = None
    exclusive: str | None = None
    released: trio.Event = field(default_factory=trio.Event)


class PortRegistry:
    def __init__(self) -> None:
        self._ports: dict[str, _PortState] = {}
        self.leases = LeaseBook()
        # Set and replaced whenever a lease ends: waiters (--wait) look again.
        self.lease_changed = trio.Event()

    def holders(self) -> dict[str, str]:
        out = {}
        for port, state in self._ports.items():
            if state.exclusive:
                out[port] = state.exclusive
            elif state.monitor:
                out[port] = state.monitor.holder
        return out

    def leases_changed(self) -> None:
        self.lease_changed.set()
        self.lease_changed = trio.Event()

    def blocking_lease(self, port: str) -> Lease | None:
        caller = CALLER.get()
        key, presented = (caller.key, caller.presented) if caller else ("", set())
        return self.leases.blocking(port, key, frozenset(presented), time.time())

    def check_lease(self, port: str) -> None:
        lease = self.blocking_lease(port)
        if lease is not None:
            raise PortBusy(
                port, lease.holder, f"leased by {lease.holder} until {when(lease.until)}", lease
            )

    def lease_info(self, port: str) -> dict[str, Any] | None:
        """``device list``'s extra key: a lease, or a running upload, test or monitor."""
        lease = self.leases.get(port, time.time())
        if lease is not None:
            return lease.public()
        holder = self.holders().get(port)
        return {"holder": holder, "until": None, "note": ""} if holder else None

    def _state(self, port: str) -> _PortState:
        return self._ports.setdefault(port, _PortState())

    def _forget_if_idle(self, port: str) -> None:
        state = self._ports.get(port)
        if state and state.monitor is None and state.exclusive is None:
            del self._ports[port]

    @asynccontextmanager
    async def monitor(self, port: str, holder: str) -> AsyncIterator[MonitorLease]:
        self.check_lease(port)
        state = self._state(port)
        if state.monitor is not None:
            holder = state.monitor.holder
            raise PortBusy(port, holder, f"monitored by {holder}", monitored=True)
        if state.exclusive is not None:
            raise PortBusy(port, state.exclusive, state.exclusive)
        lease = MonitorLease(port, holder)
        state.monitor = lease
        try:
            yield lease
        finally:
            state.monitor = None
            self._forget_if_idle(port)

    @asynccontextmanager
    async def exclusive(self, port: str, holder: str) -> AsyncIterator[None]:
        self.check_lease(port)
        state = self._state(port)
        if state.exclusive is not None:
            raise PortBusy(port, state.exclusive, state.exclusive)
        state.exclusive = holder
        lease = state.monitor
        try:
            if lease is not None:
                lease.pause_requested.set()
                with trio.move_on_after(PAUSE_TIMEOUT):
                    await lease._paused.wait()
                if not lease._paused.is_set() and state.monitor is lease:
                    raise PortBusy(
                        port, lease.holder, f"monitored by {lease.holder}, and it did not pause"
                    )
            yield
        finally:
            state.exclusive = None
            if lease is not None:
                lease.resume()
            self._forget_if_idle(port)
