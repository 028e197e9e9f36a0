"""A monitored port that outlives its session: the port, its reader and its output ring.

Task tree, in the agent's own nursery (not the session's, so a lost session
does not close the port):

    PortStream.run ── supervisor   owns open/close: unplug, upload pause, reopen
                      ├── reader   port -> ring
                      └── keeper   ends the stream once it stayed detached for the grace period

A ``monitor.open`` call attaches to the stream (monitor.py): it sends the ring's
bytes from its client's offset on until it has caught up, then hands over to
the reader, which sends what it reads itself, as one task (a second task per
read would cost a wake-up per read, the agent's main cost with a farm of
trickling boards: scripts/bench farm-monitor). When the session is lost the call
ends but the stream stays: the port is not reopened (no DTR toggle, no reset),
the board's output goes on into the ring, and the client that reconnects
within ``monitor_grace_seconds`` resumes with the token only its key may use
(wire/resume.py). A call the client cancels on purpose ends the stream at once.

Backpressure: the reader's send waits for the client's credit, and while a
call is catching up the reader does not read while a whole ring is unsent, so
a client that stops reading stops the agent reading the port, as before.
While detached the ring keeps the newest bytes and counts the ones it overwrote.
The ring's bytes are taken from the agent's memory budget (membudget.py
``hold``): when the budget has no room the ring is smaller, and the client is
told what was lost.
"""

from __future__ import annotations

import logging
import os
import secrets
from typing import TYPE_CHECKING, Any

import serial
import trio

from pio_remote.agent.credit import send_grants_later
from pio_remote.agent.handlers import CallFailed
from pio_remote.agent.serial import backend
from pio_remote.agent.serial.common import COALESCE_LIMIT, OPEN_ERRORS, PortClosed, PortGone
from pio_remote.agent.serial.portlock import MonitorLease
from pio_remote.net.channel import Call, ChannelClosed
from pio_remote.net.link import RelayError
from pio_remote.wire import serial_events as ev
from pio_remote.wire.resume import OutputRing

if TYPE_CHECKING:
    from pio_remote.agent.service import AgentState

log = logging.getLogger("pio_remote.agent.serial.stream")

# How often a lost port is looked for again. A re-plugged USB board takes about
# a second to enumerate, so a quarter second costs little and is not noticed.
POLL_INTERVAL = 0.25
# A port that opens but fails again at once (a flaky cable, a stale link) is
# retried ever more slowly, up to this, so the client is not flooded with notices.
MAX_POLL_INTERVAL = 4.0
# A port that stayed open this long was healthy: the next loss starts over.
HEALTHY_AFTER = 5.0
# A board that prints a little at a time (log lines every few ms, as a USB-serial
# bridge delivers them) would cost a wake-up and a session message per read, and
# those are most of the agent's CPU (scripts/bench farm-monitor). While output
# trickles in like that, the agent reads it once per BATCH_WINDOW instead; FTDI
# adapters hold data up to 16 ms for the same reason. A key typed by the client
# ends the wait at once (its echo is not held), and a read of TRICKLE_BYTES or
# more is a fast stream, which fills its reads without waiting.
BATCH_WINDOW = 0.020
TRICKLE_BYTES = 1024


class PortStream:
    """One monitored port, kept across sessions; see the module docstring."""

    def __init__(
        self,
        agent: AgentState,
        key: str,
        path: str,
        settings: ev.SerialSettings,
        owner_key: bytes,
        holder: str,
    ) -> None:
        self.agent = agent
        self.key = key  # the registry's name for the port
        self.path = path
        self.settings = settings
        self.owner_key = owner_key
        self.holder = holder
        self.token = secrets.token_urlsafe(24)
        self.grace = float(agent.config.monitor_grace_seconds)
        self.ring = OutputRing(agent.config.monitor_ring_bytes)
        self._held = 0  # bytes of the agent's memory budget the ring holds
        self.lease: MonitorLease | None = None
        self.port: backend.Port | None = None
        self._last_port: backend.Port | None = None  # closed, maybe not yet for the OS
        self.first_warnings: list[str] = []
        self.call: Call | None = None  # the attached call, None while detached
        self.live: Call | None = None  # the attached call once caught up: the reader sends
        self.sent = 0  # offset the attached call has sent up to
        # The reader's, cancelled when its live call goes: a send to a call that is gone
        # would wait for credit forever. One per live period: a scope per send costs
        # as much as the rest of a read.
        self._reader_scope = trio.CancelScope()
        self.typed = trio.Event()  # the client wrote to the port: stop gathering
        self.drained = trio.lowlevel.ParkingLot()  # the attached call sent some
        self.done = trio.Event()
        self._attached = trio.Event()
        self._detached = trio.Event()
        self._port_ready = trio.Event()  # set while self.port is open
        self._lost = trio.Event()  # the reader saw the device go away
        self._lost_reason = ""
        self._opened_at = 0.0
        self._poll = POLL_INTERVAL
        self._scope = trio.CancelScope()

    # ---- attachment (monitor.py) --------------------------------------------------------

    def attach(self, call: Call, offset: int, holder: str) -> Call | None:
        """``call`` carries the stream from ``offset`` on; returns the call it replaced."""
        old, self.call = self.call, call
        self._stop_live()
        self.sent = offset
        self.holder = holder
        if self.lease is not None:
            self.lease.holder = holder
        self._attached.set()
        if self._detached.is_set():  # re-armed only once used: _keep may wait on it already
            self._detached = trio.Event()
        self.drained.unpark_all()
        return old

    def detach(self, call: Call) -> None:
        """The session of ``call`` was lost: keep the port for the grace period."""
        if self.call is call:
            self.call = None
            self._stop_live()
            if self._attached.is_set():
                self._attached = trio.Event()
            self._detached.set()
            self.drained.unpark_all()  # the reader no longer waits for this call

    def caught_up(self, call: Call) -> bool:
        """``call`` has sent all the ring holds: from here on the reader sends."""
        if self.call is call and self.sent == self.ring.end:
            self.live = call
            return True
        return False

    def _stop_live(self) -> None:
        if self.live is not None:
            self.live = None
            self._reader_scope.cancel()

    def close(self) -> None:
        self.call = None
        self._stop_live()
        self._scope.cancel()

    @property
    def lost_reason(self) -> str:
        return self._lost_reason if self.port is None else ""

    async def notify(self, body: dict[str, Any]) -> None:
        """A notice for the attached client; while detached there is nobody to tell."""
        call = self.call
        if call is None:
            return
        try:
            await call.send_event(body)
        except (ChannelClosed, RelayError):
            pass  # that session is gone; its call is detached when it ends

    # ---- the stream's own tasks ---------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the port (errors raised to the opener), then keep it until closed or expired."""
        try:
            with self._scope:
                async with self.agent.ports.monitor(self.key, self.holder) as lease:
                    self.lease = lease
                    try:
                        port, self.first_warnings = await self._open()
                    except OPEN_ERRORS as exc:
                        raise CallFailed(
                            "open_failed", f"cannot open {self.path}: {why(exc)}"
                        ) from None
                    self._set_port(port)
                    self.agent.streams[self.key] = self
                    task_status.started()
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._read)
                            nursery.start_soon(self._keep)
                            await self._supervise()
                    except Exception:  # a bug here must not take the agent's nursery down
                        log.exception("monitor of %s failed", self.path)
                    finally:
                        self._close_port()
                        with trio.CancelScope(shield=True):
                            await self._wait_closed()
        finally:
            if self.agent.streams.get(self.key) is self:
                del self.agent.streams[self.key]
            self._release_ring()
            self.done.set()

    async def _keep(self) -> None:
        """End the stream once it has been detached for the whole grace period."""
        while True:
            await self._detached.wait()
            with trio.move_on_after(self.grace):
                await self._attached.wait()
            if self.call is None:
                log.info("%s: no resume within %g s; closing", self.path, self.grace)
                self._scope.cancel()
                return

    async def _supervise(self) -> None:
        while True:
            paused = await self._wait_for_trouble()
            self._close_port()
            if paused:
                await self._pause()
            else:
                log.info("%s lost: %s", self.path, self._lost_reason)
                await self.notify(ev.lost(self.path, self._lost_reason))
            await self._reopen()

    async def _wait_for_trouble(self) -> bool:
        """Wait until an upload asks for the port (True) or the device goes away (False)."""
        assert self.lease is not None
        pause = self.lease.pause_requested  # re-armed by lease.resume(): read it each time
        if not pause.is_set() and not self._lost.is_set():
            async with trio.open_nursery() as nursery:

                async def first(event: trio.Event) -> None:
                    await event.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(first, pause)
                nursery.start_soon(first, self._lost)
        return pause.is_set()

    async def _pause(self) -> None:
        """The port is closed: let the upload go ahead, and wait until it is done."""
        assert self.lease is not None
        await self._wait_closed()
        self.lease.paused()
        holder = self.agent.ports.holders().get(self.lease.port, "an upload")
        await self.notify(ev.paused(self.path, holder))
        await self.lease.resumed()

    async def _reopen(self) -> None:
        """Poll until the port opens again; an upload may take it meanwhile."""
        assert self.lease is not None
        healthy = trio.current_time() - self._opened_at > HEALTHY_AFTER
        self._poll = POLL_INTERVAL if healthy else min(MAX_POLL_INTERVAL, self._poll * 2)
        await trio.sleep(self._poll)
        while True:
            if self.lease.pause_requested.is_set():
                await self._pause()
            if os.path.exists(self.path):
                try:
                    port, warnings = await self._open()
                except OPEN_ERRORS as exc:
                    log.debug("reopening %s: %s", self.path, why(exc))
                else:
                    self._set_port(port)
                    await self.notify(ev.opened(self.path, self.settings, resumed=True))
                    for text in warnings:
                        await self.notify(ev.warning(text))
                    return
            await trio.sleep(POLL_INTERVAL)

    async def _open(self) -> tuple[backend.Port, list[str]]:
        await self._wait_closed()  # the last handle first: a COM port opens once at a time
        return await backend.open_port(self.agent.config.serial_backend, self.path, self.settings)

    async def _wait_closed(self) -> None:
        if self._last_port is not None:
            await self._last_port.wait_closed()
            self._last_port = None

    def _set_port(self, port: backend.Port) -> None:
        self.port = port
        self.settings = port.settings  # what the port took (it may refuse some)
        self._opened_at = trio.current_time()
        self._lost = trio.Event()
        self._port_ready.set()

    def _close_port(self) -> None:
        if self.port is not None:
            self.port.close()
            self._last_port, self.port = self.port, None
            self._port_ready = trio.Event()

    def report_lost(self, port: backend.Port, reason: str) -> None:
        """A pump saw the device go: close it now (so no pump spins on EIO), tell the supervisor."""
        if port is self.port and not self._lost.is_set():
            self._lost_reason = reason
            self._close_port()
            self._lost.set()

    # ---- port -> ring ---------------------------------------------------------------------

    async def _read(self) -> None:
        """Read, restarted when its live call goes (nothing read is lost: see port.read)."""
        while True:
            with trio.CancelScope() as self._reader_scope:
                await self._read_on()

    async def _read_on(self) -> None:
        trickling = False
        last_read = -BATCH_WINDOW
        while True:
            port = self.port
            if port is None:
                await self._port_ready.wait()
                continue
            catching_up = self.call is not None and self.live is None
            if catching_up and self.ring.end - self.sent >= self.ring.capacity:
                await self.drained.park()  # the client is a whole ring behind
                continue
            if trickling:
                data = await self._gather(port)
                if not data:
                    trickling = False
                    continue
            else:
                try:
                    data = await port.read()
                except PortClosed:
                    continue
                except PortGone as exc:
                    self.report_lost(port, str(exc))
                    continue
            now = trio.current_time()
            trickling = len(data) < TRICKLE_BYTES and (trickling or now - last_read < BATCH_WINDOW)
            last_read = now
            self._keep_bytes(data)
            if self.live is not None:
                await self._send_live(self.live, data)

    async def _send_live(self, call: Call, data: bytes) -> None:
        try:
            await call.send(data)
            self.sent += len(data)
        except (ChannelClosed, RelayError):
            if self.live is call:
                self.live = None  # its session is gone; it is detached when its call ends

    async def _gather(self, port: backend.Port) -> bytes:
        """What the port printed in one BATCH_WINDOW; b"" if nothing, or if the client typed."""
        with trio.move_on_after(BATCH_WINDOW):
            await self.typed.wait()
        if self.typed.is_set():
            self.typed = trio.Event()
            return b""  # back to reading at once, for the echo
        return port.read_waiting(COALESCE_LIMIT)

    def _keep_bytes(self, data: bytes) -> None:
        """Into the ring, within what the memory budget gives it."""
        growth = min(len(self.ring) + len(data), self.ring.capacity) - self._held
        if growth > 0:
            self._held += self.agent.credit_book().hold(growth)
        self.ring.append(data)
        self.ring.shrink(self._held)

    def _release_ring(self) -> None:
        if self._held:
            book = self.agent.credit_book()
            send_grants_later(book, book.unhold(self._held))
            self._held = 0
            self.ring.shrink(0)


def why(exc: BaseException) -> str:
    if isinstance(exc, serial.SerialException) and exc.args and isinstance(exc.args[-1], str):
        return exc.args[-1]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
