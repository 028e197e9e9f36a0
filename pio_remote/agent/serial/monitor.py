"""The agent side of a serial monitor: move bytes between one port and one call.

The agent only moves bytes; filters, EOL handling and the terminal live on
the client. Task tree of one ``monitor.open`` call:

    monitor.open ── supervisor   owns open/close: unplug, upload pause, reopen
                    ├── port -> client   read, then ``call.send`` (waits for credit)
                    └── client -> port   DATA is written, EVENTs change settings

Backpressure: the port -> client task does not read the port again until the
previous bytes were sent, and ``call.send`` waits for the client's credit. A
client that stops reading therefore stops the agent reading the port; the
device then blocks in the OS (or drops, as a real UART does when nobody reads),
and the agent's memory for this monitor stays bounded by one read.

One owner per port (``PortRegistry.monitor``): a second monitor is refused with
the holder's name. When the client goes away its session is cancelled, which
cancels this call, which closes the port and frees it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import serial
import trio

from pio_remote.agent import gate, lease_calls
from pio_remote.agent.handlers import CallContext, CallFailed, handler
from pio_remote.agent.serial import backend
from pio_remote.agent.serial.common import COALESCE_LIMIT, OPEN_ERRORS, PortClosed, PortGone
from pio_remote.agent.serial.portlock import MonitorLease, PortBusy
from pio_remote.net.channel import Call, ChannelClosed
from pio_remote.wire import serial_events as ev

log = logging.getLogger("pio_remote.agent.serial.monitor")

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


@handler("monitor.open")
async def monitor_open(
    ctx: CallContext, port: str, settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Stream one serial port until the client leaves (which cancels this call)."""
    try:
        wanted = ev.SerialSettings.from_dict(settings or {})
    except ValueError as exc:
        raise CallFailed("bad_params", f"monitor.open: {exc}") from None
    agent = ctx.agent
    found = gate.offered_port(agent.config, port, network=False)
    if found is None:
        raise CallFailed(
            "no_such_port",
            f"agent '{agent.agent_id}' offers no port {port!r}: run 'pio-remote -a "
            f"{agent.name} device list' to see its ports",
        )
    path = found.name
    try:
        async with agent.ports.monitor(found.key, ctx.channel.holder) as lease:
            monitor = PortMonitor(ctx, path, lease, wanted)
            await monitor.run()
    except PortBusy as exc:
        if not exc.monitored:
            raise lease_calls.busy_failure(agent, exc, can_wait=False) from None
        raise CallFailed(
            "port_busy",
            f"{exc} on agent '{agent.agent_id}'; a port has one monitor at a time: "
            "try again when they close it",
        ) from None
    return {"port": path, "bytes_from_port": monitor.bytes_from_port}


class PortMonitor:
    """One port, one call: the supervisor and the two pumps of the module docstring."""

    def __init__(
        self, ctx: CallContext, path: str, lease: MonitorLease, settings: ev.SerialSettings
    ) -> None:
        self.ctx = ctx
        self.call: Call = ctx.call
        self.path = path
        self.lease = lease
        self.settings = settings
        self.port: backend.Port | None = None
        self._last_port: backend.Port | None = None  # closed, maybe not yet for the OS
        self._port_ready = trio.Event()  # set while self.port is open
        self._lost = trio.Event()  # a pump saw the device go away
        self._lost_reason = ""
        self._drop_warned = False
        self._opened_at = 0.0
        self._poll = POLL_INTERVAL
        self._typed = trio.Event()  # the client wrote to the port: stop gathering
        self.bytes_from_port = 0

    async def run(self) -> None:
        try:
            port, warnings = await self._open()
        except OPEN_ERRORS as exc:
            raise CallFailed("open_failed", f"cannot open {self.path}: {_why(exc)}") from None
        try:
            self._set_port(port)
            await self.call.send_event(ev.opened(self.path, self.settings))
            await self._warn(warnings)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._port_to_client)
                nursery.start_soon(self._client_to_port)
                await self._supervise()
        except* ChannelClosed:
            # The session ended (client gone, relay lost); its Cancelled follows.
            # Raised from here it would reach the agent's top level inside a group.
            pass
        finally:
            self._close_port()
            with trio.CancelScope(shield=True):
                await self._wait_closed()

    # ---- supervisor: open, close, pause, reopen -----------------------------------------

    async def _supervise(self) -> None:
        while True:
            paused = await self._wait_for_trouble()
            self._close_port()
            if paused:
                await self._pause()
            else:
                log.info("%s lost: %s", self.path, self._lost_reason)
                await self.call.send_event(ev.lost(self.path, self._lost_reason))
            await self._reopen()

    async def _wait_for_trouble(self) -> bool:
        """Wait until an upload asks for the port (True) or the device goes away (False)."""
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
        await self._wait_closed()
        self.lease.paused()
        holder = self.ctx.agent.ports.holders().get(self.lease.port, "an upload")
        await self.call.send_event(ev.paused(self.path, holder))
        await self.lease.resumed()

    async def _reopen(self) -> None:
        """Poll until the port opens again; an upload may take it meanwhile."""
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
                    log.debug("reopening %s: %s", self.path, _why(exc))
                else:
                    self._set_port(port)
                    await self.call.send_event(ev.opened(self.path, self.settings, resumed=True))
                    await self._warn(warnings)
                    return
            await trio.sleep(POLL_INTERVAL)

    async def _open(self) -> tuple[backend.Port, list[str]]:
        await self._wait_closed()  # the last handle first: a COM port opens once at a time
        return await backend.open_port(
            self.ctx.agent.config.serial_backend, self.path, self.settings
        )

    async def _wait_closed(self) -> None:
        if self._last_port is not None:
            await self._last_port.wait_closed()
            self._last_port = None

    def _set_port(self, port: backend.Port) -> None:
        self.port = port
        self.settings = port.settings  # what the port took (it may refuse some)
        self._opened_at = trio.current_time()
        self._lost = trio.Event()
        self._drop_warned = False
        self._port_ready.set()

    def _close_port(self) -> None:
        if self.port is not None:
            self.port.close()
            self._last_port, self.port = self.port, None
            self._port_ready = trio.Event()

    def _report_lost(self, port: backend.Port, reason: str) -> None:
        """A pump saw the device go: close it now (so no pump spins on EIO), tell the supervisor."""
        if port is self.port and not self._lost.is_set():
            self._lost_reason = reason
            self._close_port()
            self._lost.set()

    # ---- the two byte pumps -------------------------------------------------------------

    async def _port_to_client(self) -> None:
        trickling = False
        last_sent = -BATCH_WINDOW
        while True:
            port = self.port
            if port is None:
                await self._port_ready.wait()
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
                    self._report_lost(port, str(exc))
                    continue
            now = trio.current_time()
            small = len(data) < TRICKLE_BYTES
            trickling = small and (trickling or now - last_sent < BATCH_WINDOW)
            last_sent = now
            self.bytes_from_port += len(data)
            await self.call.send(data)

    async def _gather(self, port: backend.Port) -> bytes:
        """What the port printed in one BATCH_WINDOW; b"" if nothing, or if the client typed."""
        with trio.move_on_after(BATCH_WINDOW):
            await self._typed.wait()
        if self._typed.is_set():
            self._typed = trio.Event()
            return b""  # back to reading at once, for the echo
        return port.read_waiting(COALESCE_LIMIT)

    async def _client_to_port(self) -> None:
        while (item := await self.call.receive()) is not None:
            if isinstance(item, dict):
                await self._control(item)
                continue
            port = self.port
            if port is None:
                await self._dropped(len(item))
                continue
            try:
                await port.write(item)
                self._typed.set()
            except PortClosed:
                await self._dropped(len(item))
            except PortGone as exc:
                self._report_lost(port, str(exc))
                await self._dropped(len(item))
        # The client's EOF: nothing more to write; keep streaming the port.

    async def _dropped(self, size: int) -> None:
        if not self._drop_warned:
            self._drop_warned = True
            await self._warn([f"{self.path} is not open: {size} byte(s) from you were dropped"])

    async def _control(self, body: dict[str, Any]) -> None:
        try:
            op = ev.parse_op(body)
            new = self.settings.updated(op.changes) if isinstance(op, ev.SetSettings) else None
        except (ValueError, TypeError) as exc:
            await self._warn([f"ignored a monitor request: {exc}"])
            return
        port = self.port
        if new is not None:
            if port is not None:
                warnings = port.apply(new)
                new = port.settings  # what is in force: refused settings stay as they were
                await self._warn(warnings)
            self.settings = new  # also what a reopen will use
            await self.call.send_event(ev.applied(new))
        elif isinstance(op, ev.SetBreak):
            if port is not None:
                await self._warn(port.set_break(op.on))
        elif isinstance(op, ev.Purge) and port is not None:
            port.purge(op.input, op.output)

    async def _warn(self, warnings: list[str]) -> None:
        for text in warnings:
            await self.call.send_event(ev.warning(text))


def _why(exc: BaseException) -> str:
    if isinstance(exc, serial.SerialException) and exc.args and isinstance(exc.args[-1], str):
        return exc.args[-1]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
