"""The agent side of a serial monitor: one call attached to a kept port stream.

The agent only moves bytes; filters, EOL handling and the terminal live on
the client. The port, its reader and the output ring belong to a
``PortStream`` (stream.py), which outlives the session; this call only carries
it. Task tree of one ``monitor.open`` call:

    monitor.open ── ring -> client   from the client's offset on (waits for credit)
                    └── client -> port   DATA is written, EVENTs change settings

A call with ``resume`` (token and offset, wire/resume.py) takes a kept stream
back: same port, never reopened, bytes from the client's offset on. Only the
client key that opened it may: a token presented by another key is refused.

One owner per port (``PortRegistry.monitor``): a second monitor is refused with
the holder's name, also while the stream waits for its client to come back.
A client that cancels the call ends the stream and frees the port; a lost
session leaves it for the grace period (agent.toml ``monitor_grace_seconds``).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from pio_remote.agent import gate, lease_calls
from pio_remote.agent.handlers import CallContext, CallFailed, handler
from pio_remote.agent.serial.common import PortClosed, PortGone
from pio_remote.agent.serial.portlock import PortBusy
from pio_remote.agent.serial.stream import PortStream
from pio_remote.net.channel import Call, ChannelClosed
from pio_remote.wire import serial_events as ev
from pio_remote.wire.resume import Refused, ResumeRequest, check_resume

log = logging.getLogger("pio_remote.agent.serial.monitor")

# The most one DATA send takes from the ring (Call.send splits it further).
SEND_CHUNK = 256 * 1024
LOST_ON_RESUME = (
    "the agent no longer kept this monitor (its grace period ended, or the agent "
    "restarted): what the board printed meanwhile is lost"
)


@handler("monitor.open")
async def monitor_open(
    ctx: CallContext,
    port: str,
    settings: dict[str, Any] | None = None,
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Stream one serial port until the client leaves (which cancels this call)."""
    try:
        wanted = ev.SerialSettings.from_dict(settings or {})
        request = ResumeRequest.from_dict(resume) if resume is not None else None
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
    lost = ""
    if request is not None:
        kept = agent.streams.get(found.key)
        if kept is None:
            lost = LOST_ON_RESUME
        else:
            verdict = check_resume(
                kept.owner_key, kept.token, ctx.channel.client_key, request, kept.ring
            )
            if isinstance(verdict, Refused):
                log.warning("resume of %s refused: %s", found.name, verdict.message)
                message = f"cannot resume the monitor of {found.name}: {verdict.message}"
                raise CallFailed("resume_refused", message)
            return await carry(ctx, kept, verdict.offset, missing=verdict.missing, continued=True)
    stream = PortStream(
        agent, found.key, found.name, wanted, ctx.channel.client_key, ctx.channel.holder
    )
    try:
        if agent.keeper is None:  # no agent-wide nursery (embedded use): no resume
            return await carry_here(ctx, stream, lost)
        await agent.keeper.start(stream.run)
    except PortBusy as exc:
        if not exc.monitored:
            raise lease_calls.busy_failure(agent, exc, can_wait=False) from None
        raise CallFailed(
            "port_busy",
            f"{exc} on agent '{agent.agent_id}'; a port has one monitor at a time: "
            "try again when they close it",
        ) from None
    return await carry(ctx, stream, 0, lost=lost)


async def carry_here(ctx: CallContext, stream: PortStream, lost: str) -> dict[str, Any]:
    """The stream in this call's own nursery: it ends with the call."""
    refusal: Exception | None = None
    result: dict[str, Any] = {}
    stream.grace = 0
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(stream.run)
        except (PortBusy, CallFailed) as exc:
            refusal = exc
        else:
            result = await carry(ctx, stream, 0, lost=lost)
        nursery.cancel_scope.cancel()
    if refusal is not None:
        raise refusal
    return result


async def carry(
    ctx: CallContext,
    stream: PortStream,
    offset: int,
    *,
    missing: int = 0,
    continued: bool = False,
    lost: str = "",
) -> dict[str, Any]:
    """Attach this call to ``stream`` from ``offset`` on, until the call ends."""
    call = ctx.call
    old = stream.attach(call, offset, ctx.channel.holder)
    if old is not None and old.cancel_scope is not None:
        old.cancel_scope.cancel()  # a session of ours the agent has not yet seen die
    pumps = Pumps(stream, call)
    try:
        opened = ev.opened(
            stream.path,
            stream.settings,
            token=stream.token if stream.grace > 0 else "",
            offset=offset,
            continued=continued,
            missing=missing,
            lost=lost,
        )
        await call.send_event(opened)
        if stream.lost_reason:
            await call.send_event(ev.lost(stream.path, stream.lost_reason))
        await pumps.warn(stream.first_warnings if not continued else [])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pumps.to_client, offset)
            nursery.start_soon(pumps.to_port)
            await stream.done.wait()  # the stream ended (a bug, or the agent stopping)
            nursery.cancel_scope.cancel()
    except* ChannelClosed:
        # The session ended (client gone, relay lost); its Cancelled follows.
        # Raised from here it would reach the agent's top level inside a group.
        pass
    finally:
        if stream.call is call:
            if call.cancel_requested or stream.grace <= 0:
                stream.close()
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await stream.done.wait()  # the port is free when the RESULT goes
            else:
                log.info("%s: session lost; keeping the port for %g s", stream.path, stream.grace)
                stream.detach(call)
    return {"port": stream.path, "bytes_from_port": stream.ring.end}


class Pumps:
    """The two byte pumps of one attached call."""

    def __init__(self, stream: PortStream, call: Call) -> None:
        self.stream = stream
        self.call = call
        self._drop_warned = False

    async def to_client(self, offset: int) -> None:
        """The ring from ``offset`` until caught up; then the stream's reader sends."""
        stream, ring = self.stream, self.stream.ring
        while stream.call is self.call and not stream.caught_up(self.call):
            gap, data = ring.read_from(offset, SEND_CHUNK)
            if gap:
                offset += gap
                # The board went on printing while this client caught up, and the ring
                # (monitor_ring_bytes, or less if the memory budget is short) overran.
                await self.warn(
                    [f"{gap} byte(s) of output were lost while catching up: the ring overran"]
                )
            if data:
                await self.call.send(data)
                offset += len(data)
            if stream.call is self.call:
                stream.sent = offset
                stream.drained.unpark_all()

    async def to_port(self) -> None:
        stream = self.stream
        while (item := await self.call.receive()) is not None:
            if isinstance(item, dict):
                await self._control(item)
                continue
            port = stream.port
            if port is None:
                await self._dropped(len(item))
                continue
            try:
                await port.write(item)
                stream.typed.set()
            except PortClosed:
                await self._dropped(len(item))
            except PortGone as exc:
                stream.report_lost(port, str(exc))
                await self._dropped(len(item))
        # The client's EOF: nothing more to write; keep streaming the port.

    async def _dropped(self, size: int) -> None:
        if not self._drop_warned:
            self._drop_warned = True
            path = self.stream.path
            await self.warn([f"{path} is not open: {size} byte(s) from you were dropped"])

    async def _control(self, body: dict[str, Any]) -> None:
        stream = self.stream
        try:
            op = ev.parse_op(body)
            new = stream.settings.updated(op.changes) if isinstance(op, ev.SetSettings) else None
        except (ValueError, TypeError) as exc:
            await self.warn([f"ignored a monitor request: {exc}"])
            return
        port = stream.port
        if new is not None:
            if port is not None:
                warnings = port.apply(new)
                new = port.settings  # what is in force: refused settings stay as they were
                await self.warn(warnings)
            stream.settings = new  # also what a reopen will use
            await self.call.send_event(ev.applied(new))
        elif isinstance(op, ev.SetBreak):
            if port is not None:
                await self.warn(port.set_break(op.on))
        elif isinstance(op, ev.Purge) and port is not None:
            port.purge(op.input, op.output)

    async def warn(self, warnings: list[str]) -> None:
        for text in warnings:
            await self.call.send_event(ev.warning(text))
