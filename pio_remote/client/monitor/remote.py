"""A remote serial port as a library: bytes both ways, line control, and reconnection.

    async with open_monitor("lab-pi", "/dev/ttyACM0", SerialSettings(115200)) as mon:
        await mon.send(b"help\\r\\n")
        while True:
            item = await mon.receive()      # bytes, or a notice (port lost, reconnecting...)

Task tree:

    open_monitor ── keeper   connect -> session -> ``monitor.open`` call; on a lost
                    │        relay or session: back off, connect again, same settings
                    └── (per connection) outbound: send()/set() -> call

The keeper reads the call only as fast as ``receive()`` is called (a bounded
hand-off), so a consumer that stops reading stops the agent reading the port:
backpressure reaches the device.

Continuity: the agent keeps a monitor whose session was lost for its grace
period, port open, output in a ring (agent/serial/stream.py). The keeper
counts the bytes it received and reconnects with the monitor's resume token
and that offset, so the stream goes on with no byte lost or repeated; bytes
the ring had to overwrite are reported as ``OutputMissing``, a monitor the
agent no longer has as ``ResumeLost``. Bytes given to ``send()`` while no
connection exists are dropped (``InputDropped``), never replayed into the board
later; settings changed with ``set()`` are kept and sent on the next connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from pio_remote.client.api import AgentSession, Client, RemoteError
from pio_remote.client.monitor.items import (
    ConnectionLost,
    InputDropped,
    Item,
    OutputMissing,
    Reconnected,
    ResumeLost,
)
from pio_remote.client.targets import display_name
from pio_remote.net.channel import Call, ChannelClosed
from pio_remote.net.groups import first_leaf
from pio_remote.net.link import UNREACHABLE, RelayError
from pio_remote.net.retry import backoff
from pio_remote.wire import serial_events as ev
from pio_remote.wire.resume import ResumeRequest

# Items handed from the connection to receive() before the connection stops
# reading the call (and so stops granting credit to the agent).
INBOUND_ITEMS = 4
OUTBOUND_ITEMS = 16
# Errors that another attempt cannot fix: keys, pairing, bad requests, a relay
# that refuses our token. Everything else (offline, port busy while our old
# session is being torn down, port missing while unplugged) is retried.
FATAL_REMOTE_CODES = frozenset(
    {
        "not_paired",
        "key_mismatch",
        "handshake",
        "bad_params",
        "unknown_method",
        "refused",
        "resume_refused",
    }
)
FATAL_RELAY_CODES = frozenset({"auth", "token_revoked", "version"})


# How long leaving waits for the agent to take the monitor's CANCEL.
END_TIMEOUT = 2.0


class _EndedOnPurpose(Exception):
    """``end()`` cancelled the call: the keeper stops instead of reconnecting."""


class _Started:
    """A task status whose ``started`` runs a hook first (the keeper's shield)."""

    def __init__(self, hook: Callable[[None], None]) -> None:
        self.started = hook


# Choosing the agent (from the names online) and the port (from the agent's
# device.list) happens on the monitor's first connection, so that choosing
# costs no connection or session of its own. A chooser raises to refuse.
AgentChooser = Callable[[list[str]], str]
PortChooser = Callable[[str, list[dict[str, Any]]], str]


def is_fatal(exc: BaseException) -> bool:
    if isinstance(exc, RemoteError):
        return exc.code in FATAL_REMOTE_CODES
    if isinstance(exc, RelayError):
        return exc.code in FATAL_RELAY_CODES
    return not isinstance(exc, ChannelClosed | trio.TooSlowError)


class Monitor:
    """A live monitor. Use ``open_monitor``; methods are safe to call from any task."""

    def __init__(
        self,
        agent: str,
        port: str,
        settings: ev.SerialSettings,
        *,
        reconnect: bool,
        connect_args: dict[str, Any],
        choose_agent: AgentChooser | None = None,
        choose_port: PortChooser | None = None,
        session: AgentSession | None = None,
    ) -> None:
        self.agent = agent  # as the user named it
        self._session = session  # a session of the caller's, instead of connecting
        self._choose_agent = choose_agent
        self._choose_port = choose_port
        self.agent_id = agent  # owner/name, once the relay resolved it
        self.port = port
        self.settings = settings
        self.reconnect = reconnect
        self._connect_args = connect_args
        self._in_send, self._in_recv = trio.open_memory_channel[Item](INBOUND_ITEMS)
        self._out_send, self._out_recv = trio.open_memory_channel[Any](OUTBOUND_ITEMS)
        self._eof = False
        self.eof_sent = trio.Event()  # send_eof() reached the agent's call
        self.connected = False
        self.started = False  # the first connection succeeded
        self._was_up = False  # the last connection got as far as an open port
        self._token = ""  # the agent's resume token for this stream
        self.offset = 0  # bytes of the stream received (the agent numbers them the same)
        self._dropped = 0  # bytes from send() dropped while disconnected
        self._carried: list[Any] = []  # settings ops queued when a connection dropped
        self._scope = trio.CancelScope()  # the keeper's: shielded once the first open is done
        self._call_scope: trio.CancelScope | None = None  # the running monitor.open call's
        self._ended = trio.Event()

    # ---- the consumer's side ------------------------------------------------------------

    async def receive(self) -> Item | None:
        """The next device bytes or notice; None once the monitor has ended for good.

        Waits for data; not calling it is backpressure all the way to the device.
        """
        try:
            return await self._in_recv.receive()
        except trio.EndOfChannel:
            return None

    async def send(self, data: bytes) -> None:
        """Bytes for the device. Waits while the agent or the device is behind."""
        if data:
            if self.started and not self.connected:
                self._dropped += len(data)  # typed into the gap: never sent late
                return
            await self._out_send.send(bytes(data))

    async def set(self, **changes: Any) -> None:
        """Change line settings (``baudrate``, ``dtr``, ``rts``, ``parity``...) on the port."""
        self.settings = self.settings.updated(changes)  # kept for the next connection too
        await self._out_send.send(ev.set_op(**changes))

    async def set_break(self, on: bool) -> None:
        await self._out_send.send(ev.break_op(on))

    async def purge(self, input: bool = True, output: bool = True) -> None:
        await self._out_send.send(ev.purge_op(input, output))

    async def send_eof(self) -> None:
        """No more bytes for the device; device output keeps coming."""
        await self._out_send.send(None)

    # ---- the connection keeper ----------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """``keep_connected``, shielded from the caller's cancellation once started, so
        that leaving ends the call on purpose (``end``) over a connection still alive:
        a cancelled call frees the port at once, a lost one keeps it for a resume."""

        def started(value: None = None) -> None:
            self._scope.shield = True
            task_status.started(value)

        try:
            with self._scope:
                await self.keep_connected(_Started(started))
        finally:
            self._ended.set()

    async def end(self) -> None:
        """Cancel the monitor.open call (the agent closes the port), then stop."""
        if self._call_scope is not None:
            self._call_scope.cancel()
            with trio.move_on_after(END_TIMEOUT):
                await self._ended.wait()
        self._scope.cancel()

    async def keep_connected(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, stream, and reconnect until cancelled; the first failure is raised."""
        attempt = 0
        async with self._in_send:
            while True:
                try:
                    try:
                        await self._connection(task_status)
                    except BaseExceptionGroup as group:
                        raise first_leaf(group) from None
                    return  # the agent ended the monitor itself
                except _EndedOnPurpose:
                    return
                except (RemoteError, RelayError, ChannelClosed, trio.TooSlowError) as exc:
                    self.connected = False
                    if isinstance(exc, RemoteError) and exc.code == "bad_params" and self._token:
                        self._token = ""  # an agent without resume: open afresh
                    elif not self.started or not self.reconnect or is_fatal(exc):
                        raise
                    if self._was_up or getattr(exc, "code", "") == UNREACHABLE:
                        attempt = 0  # it was up, or the relay is: the agent comes soon
                    delay = backoff(attempt)
                    attempt += 1
                    self._was_up = False
                    self._drop_pending_input()
                    await self._in_send.send(ConnectionLost(str(exc), delay))
                    await trio.sleep(delay)

    def _drop_pending_input(self) -> None:
        """Bytes queued for the lost connection are dropped; settings ops are kept."""
        while True:
            try:
                item = self._out_recv.receive_nowait()
            except trio.WouldBlock:
                return
            if isinstance(item, bytes):
                self._dropped += len(item)
            else:
                self._carried.append(item)

    async def _connection(self, task_status: trio.TaskStatus[None]) -> None:
        if self._session is not None:
            await self._call(self._session, task_status)
            return
        early = [self.agent] if self._choose_agent is None else []  # its OPEN goes with HELLO
        async with Client.connect(**self._connect_args, agents=early) as client:
            if self._choose_agent is not None:
                online = [display_name(client, a.agent) for a in await client.list_agents()]
                self.agent = self._choose_agent(online)
                self._choose_agent = None  # chosen once: a reconnect goes back to it
            async with client.session(self.agent) as session:
                if self._choose_port is not None:
                    self.port = self._choose_port(self.agent, await session.call("device.list"))
                    self._choose_port = None
                await self._call(session, task_status)

    async def _call(self, session: AgentSession, task_status: trio.TaskStatus[None]) -> None:
        params: dict[str, Any] = {"port": self.port, "settings": self.settings.to_dict()}
        if self._token:
            params["resume"] = ResumeRequest(self._token, self.offset).to_dict()
        async with session.open_call("monitor.open", **params) as call:
            with trio.CancelScope() as self._call_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._outbound, call)
                    await self._inbound(call, session.agent_id, task_status)
                    nursery.cancel_scope.cancel()
            ended_on_purpose = self._call_scope.cancelled_caught
            self._call_scope = None
        if ended_on_purpose:
            raise _EndedOnPurpose()

    async def _inbound(self, call: Call, agent_id: str, task_status: trio.TaskStatus[None]) -> None:
        while True:
            item = await call.receive()
            if item is None:
                if call.result is None:
                    continue  # the agent's EOF: its RESULT follows
                if not call.result.ok:
                    raise RemoteError(
                        call.result.error_message or call.result.error_code,
                        call.result.error_code,
                    )
                return  # the agent ended the monitor
            if isinstance(item, bytes):
                await self._in_send.send(item)
                # Counted once handed over: a hand-off cut short by a lost connection
                # leaves the bytes to the resume, which asks from this offset.
                self.offset += len(item)
                continue
            notice = ev.parse_notice(item)
            if notice is None:
                continue
            if isinstance(notice, ev.Opened | ev.Applied):
                self.settings = notice.settings
            if isinstance(notice, ev.Opened) and not self.connected:
                self._token, self.offset = notice.token, notice.offset
                self.connected = self._was_up = True
                self.agent_id = agent_id
                if not self.started:
                    self.started = True
                    task_status.started()
                else:
                    await self._in_send.send(Reconnected(self.agent))
                    await self._after_reconnect(notice)
            await self._in_send.send(notice)

    async def _after_reconnect(self, opened: ev.Opened) -> None:
        if opened.missing:
            await self._in_send.send(OutputMissing(opened.missing))
        if opened.lost:
            await self._in_send.send(ResumeLost(opened.lost))
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            await self._in_send.send(InputDropped(dropped))

    async def _outbound(self, call: Call) -> None:
        carried, self._carried = self._carried, []
        for op in carried:
            if op is None:
                self._eof = True  # send_eof() came before the drop
            else:
                await call.send_event(op)
        while not self._eof:
            item = await self._out_recv.receive()
            if item is None:
                self._eof = True
            elif isinstance(item, bytes):
                await call.send(item)
            else:
                await call.send_event(item)
        await call.send_eof()  # also on a new connection after input ended on an old one
        self.eof_sent.set()


@asynccontextmanager
async def open_monitor(
    agent: str,
    port: str,
    settings: ev.SerialSettings | None = None,
    *,
    reconnect: bool = True,
    relay: str | None = None,
    token: str | None = None,
    home_path: Path | None = None,
    choose_agent: AgentChooser | None = None,
    choose_port: PortChooser | None = None,
    session: AgentSession | None = None,
) -> AsyncIterator[Monitor]:
    """Open ``port`` on ``agent``; returns once the agent has opened it.

    Errors of the first attempt (agent offline, port busy, not paired) are
    raised here; later ones are retried when ``reconnect`` is set, and appear
    as ``ConnectionLost``/``Reconnected`` items from ``receive()``. With
    ``choose_agent``/``choose_port``, ``agent``/``port`` are replaced by their
    choice, made on the first connection; what they raise is raised here.
    With ``session`` the call runs on that session (no connecting, and no
    reconnecting: the session's owner does that).
    """
    monitor = Monitor(
        agent,
        port,
        settings or ev.SerialSettings(),
        reconnect=reconnect and session is None,
        connect_args={"relay": relay, "token": token, "home_path": home_path},
        choose_agent=choose_agent,
        choose_port=choose_port,
        session=session,
    )
    error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(monitor.run)
            try:
                yield monitor
            except Exception as exc:  # re-raised plain, not inside an ExceptionGroup
                error = exc
            finally:
                with trio.CancelScope(shield=True):
                    await monitor.end()
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if error is None:
            raise first_leaf(group) from None
    if error is not None:
        raise error
