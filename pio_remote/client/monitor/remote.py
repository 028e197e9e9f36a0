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
backpressure reaches the device. Bytes in flight when a connection drops, and
whatever the device printed while no connection existed, are lost; settings
changed with ``set()`` are kept and reapplied on the next connection.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from pio_remote.client.api import AgentSession, Client, RemoteError
from pio_remote.net.channel import Call, ChannelClosed
from pio_remote.net.link import RelayError
from pio_remote.wire import serial_events as ev

# First wait after a lost connection; doubles up to RECONNECT_MAX. Short, because
# the usual cause (a relay restart) is over in about a second.
RECONNECT_FIRST = 0.25
RECONNECT_MAX = 5.0
# Items handed from the connection to receive() before the connection stops
# reading the call (and so stops granting credit to the agent).
INBOUND_ITEMS = 4
OUTBOUND_ITEMS = 16
# Errors that another attempt cannot fix: keys, pairing, bad requests, a relay
# that refuses our token. Everything else (offline, port busy while our old
# session is being torn down, port missing while unplugged) is retried.
FATAL_REMOTE_CODES = frozenset(
    {"not_paired", "key_mismatch", "handshake", "bad_params", "unknown_method", "refused"}
)
FATAL_RELAY_CODES = frozenset({"auth", "token_revoked", "version"})


@dataclass(frozen=True)
class ConnectionLost:
    """The relay or the session went away; the monitor reconnects after ``retry_in`` s."""

    reason: str
    retry_in: float


@dataclass(frozen=True)
class Reconnected:
    agent: str


Item = bytes | ev.Notice | ConnectionLost | Reconnected
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


def backoff(attempt: int) -> float:
    """Seconds before reconnect attempt ``attempt`` (0-based), with jitter."""
    return min(RECONNECT_MAX, RECONNECT_FIRST * 2**attempt) * random.uniform(0.75, 1.0)


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
                except (RemoteError, RelayError, ChannelClosed, trio.TooSlowError) as exc:
                    self.connected = False
                    if not self.started or not self.reconnect or is_fatal(exc):
                        raise
                    if self._was_up:
                        attempt = 0
                    delay = backoff(attempt)
                    attempt += 1
                    self._was_up = False
                    await self._in_send.send(ConnectionLost(str(exc), delay))
                    await trio.sleep(delay)

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
        params = {"port": self.port, "settings": self.settings.to_dict()}
        async with session.open_call("monitor.open", **params) as call:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._outbound, call)
                await self._inbound(call, session.agent_id, task_status)
                nursery.cancel_scope.cancel()

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
                continue
            notice = ev.parse_notice(item)
            if notice is None:
                continue
            if isinstance(notice, ev.Opened | ev.Applied):
                self.settings = notice.settings
            if isinstance(notice, ev.Opened) and not self.connected:
                self.connected = self._was_up = True
                self.agent_id = agent_id
                if not self.started:
                    self.started = True
                    task_status.started()
                else:
                    await self._in_send.send(Reconnected(self.agent))
            await self._in_send.send(notice)

    async def _outbound(self, call: Call) -> None:
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
            await nursery.start(monitor.keep_connected)
            try:
                yield monitor
            except Exception as exc:  # re-raised plain, not inside an ExceptionGroup
                error = exc
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if error is None:
            raise first_leaf(group) from None
    if error is not None:
        raise error


def display_name(client: Client, agent_id: str) -> str:
    """An agent as its owner names it (``lab-pi``), else in full (``bob/lab-pi``)."""
    owner, _, name = agent_id.partition("/")
    return name if owner == client.account and name else agent_id


def first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The error that matters in a nursery's group; the group itself if it is all Cancelled.

    Cancelled must travel on unchanged (as the group), or the cancel scope that
    raised it would not recognise it.
    """
    for exc in group.exceptions:
        leaf = first_leaf(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if not isinstance(leaf, trio.Cancelled | BaseExceptionGroup):
            return leaf
    return group
