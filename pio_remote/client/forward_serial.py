"""``device forward``: a remote serial port served locally as an RFC 2217 server.

Any tool that speaks ``rfc2217://`` (pyserial, esptool, PlatformIO's own
``monitor_port = rfc2217://...``) then uses the agent's port as if it were
local; baud, DTR and RTS changes it makes travel end to end to the real port.

One relay connection and Noise session to the agent serve the whole forward
(choosing the port on it first), and each TCP connection opens its own
``monitor.open`` call on it, so the port is held only while a tool is connected
and other users can monitor it in between. A lost session is reconnected with
backoff. One tool at a time: a second connection waits briefly for the first to
finish, then is closed.

    forward ── session keeper   connect -> session; reconnect when it is lost
            └── listener ── one task per TCP connection: Bridge (telnet <-> call)

Why the telnet side is ``rfc2217.Rfc2217Server`` on trio, not pyserial's
``PortManager`` in a thread: PortManager drives a blocking serial object from
a thread, so every read, write and setting change would cross between threads,
cancelling a connection would mean unblocking a thread, and backpressure would
need queues at the boundary. On trio, a slow TCP client simply stops the task
that reads the call, which stops credit, which stops the agent reading the port.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import trio

from pio_remote.client import rfc2217
from pio_remote.client.api import AgentSession, Client, RemoteError
from pio_remote.client.monitor import options
from pio_remote.client.monitor.items import ConnectionLost, Reconnected
from pio_remote.client.monitor.remote import (
    Monitor,
    is_fatal,
    open_monitor,
)
from pio_remote.client.targets import display_name
from pio_remote.net.channel import ChannelClosed
from pio_remote.net.groups import first_leaf
from pio_remote.net.link import RelayError
from pio_remote.net.retry import backoff
from pio_remote.wire import serial_events as ev

# How long a new TCP connection waits for the previous one to let go of the
# port (tools like pyserial reconnect within ~0.3 s of closing).
HANDOVER_WAIT = 3.0
RECEIVE_SIZE = 64 * 1024
# Device output is held back until the client has finished opening the port,
# as it would only see what the board prints after its own open and purge on a
# local port (pyserial's rfc2217 open() takes ~0.4 s and ends by purging input
# then output). A client that never purges gets the output after this long.
OPEN_SETTLE_MAX = 2.0
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
# How long a tool that connects while the session to the agent is being
# re-established waits for it before its connection is closed.
SESSION_WAIT = 10.0


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``PORT`` (loopback)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:4000") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"--listen {text!r}: port {number} is out of range")
    return host, number


def note(text: str) -> None:
    print(f"--- {text}", file=sys.stderr, flush=True)


class Forwarder:
    """Serve one remote port to TCP clients, one at a time, over one session."""

    def __init__(
        self,
        agents: list[str],
        wanted: str | None,
        settings: ev.SerialSettings,
        connect_args: dict[str, Any],
    ) -> None:
        self.agents = agents
        self.wanted = wanted
        self.agent = agents[0] if len(agents) == 1 else ""
        self.port = wanted or ""
        self.settings = settings
        self.connect_args = connect_args
        self._busy = trio.Lock()
        self._session: AgentSession | None = None
        self._ready = trio.Event()  # set while _session is usable
        self._stale = trio.Event()  # a call found the session dead: reconnect
        self._started = False  # the first session (which chose the port) was up
        # Hears every byte the board sends to a tool (the pytest plugin keeps a tail).
        self.tap: Callable[[bytes], object] | None = None
        # Plain bytes, no telnet (a socket:// URL): the line settings stay ``settings``.
        self.raw = False

    def attach(self, session: AgentSession) -> None:
        """Serve over a session the caller holds (``AgentSession.forward_serial``) instead
        of ``keep_session``: nothing reconnects, a lost session fails the next tool."""
        self.agent = session.agent_id
        self._session, self._started = session, True
        self._ready.set()

    # ---- the session keeper -------------------------------------------------------------

    async def keep_session(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect and choose the port (errors of this first attempt are raised), then
        keep a session open for the TCP connections, reconnecting when it is lost."""
        attempt = 0
        while True:
            try:
                try:
                    await self._session_until_stale(task_status)
                except BaseExceptionGroup as group:
                    raise first_leaf(group) from None
            except (RemoteError, RelayError, ChannelClosed, trio.TooSlowError) as exc:
                if not self._started or is_fatal(exc):
                    raise
                note(f"connection to the agent lost: {exc}; reconnecting")
            if self._session is not None:  # it was up: start the backoff over
                attempt = 0
            self._session = None
            await trio.sleep(backoff(attempt))
            attempt += 1

    async def _session_until_stale(self, task_status: trio.TaskStatus[None]) -> None:
        async with Client.connect(**self.connect_args) as client:
            if not self.agent:
                online = [display_name(client, a.agent) for a in await client.list_agents()]
                self.agent = options.choose_agent(self.agents, online)
            async with client.session(self.agent) as session:
                if not self._started:
                    devices = await session.call("device.list")
                    self.port = options.choose_port(devices, self.wanted, self.agent)
                    options.check_port(devices, self.port, self.agent)
                self._session, self._stale = session, trio.Event()
                self._ready.set()
                if not self._started:
                    self._started = True
                    task_status.started()
                else:
                    note(f"reconnected to agent {self.agent}")
                try:
                    await self._stale.wait()
                finally:
                    if self._ready.is_set():
                        self._ready = trio.Event()

    def _mark_stale(self) -> None:
        """A call found the session gone: tools wait for the keeper's next one."""
        if self._ready.is_set():
            self._ready = trio.Event()
        self._stale.set()

    async def _current_session(self) -> AgentSession:
        with trio.move_on_after(SESSION_WAIT):
            await self._ready.wait()
        if self._session is None:
            why = f"agent '{self.agent}' is not reachable yet (reconnecting)"
            raise RemoteError(why, "offline")
        return self._session

    # ---- one TCP connection -------------------------------------------------------------

    async def handle(self, stream: trio.SocketStream) -> None:
        peer = peer_name(stream)
        async with stream:
            with trio.move_on_after(HANDOVER_WAIT) as waited:
                await self._busy.acquire()
            if waited.cancelled_caught:
                note(f"refused {peer}: another tool is using {self.port}")
                return
            try:
                note(f"{peer} connected")
                await self._bridge(stream)
                note(f"{peer} disconnected")
            except* (RelayError, ChannelClosed) as group:
                self._mark_stale()
                note(f"{peer}: {_first_message(group)}")
            except* RemoteError as group:
                note(f"{peer}: {_first_message(group)}")
            except* Exception as group:
                # Whatever one client did (vanished mid-write, sent garbage), it
                # ends this connection only: the listener serves the next one.
                note(f"{peer}: connection ended: {_first_message(group)}")
            finally:
                self._busy.release()

    async def _bridge(self, stream: trio.SocketStream) -> None:
        deadline = trio.current_time() + HANDOVER_WAIT
        renewed = opened = False
        while True:
            session = await self._current_session()
            try:
                async with open_monitor(
                    self.agent, self.port, self.settings, reconnect=False, session=session
                ) as mon:
                    opened = True
                    bridge = RawBridge if self.raw else Bridge
                    await bridge(stream, mon, self.tap).run()
                    return
            except RemoteError as exc:
                # The previous tool's monitor may still be closing on the agent.
                if exc.code != "port_busy" or trio.current_time() > deadline:
                    raise
                await trio.sleep(0.1)
            except (ChannelClosed, RelayError):
                # The session ended while no tool was connected (the agent restarted,
                # say): renew it once for this tool, which has not seen a byte yet.
                if renewed or opened or self._session is not session:
                    raise
                renewed = True
                self._mark_stale()


class ClientGone(Exception):
    """The TCP client closed or reset its connection while we wrote to it."""


class Bridge:
    """One TCP client <-> one monitor: telnet on one side, the call on the other."""

    def __init__(
        self,
        stream: trio.SocketStream,
        mon: Monitor,
        tap: Callable[[bytes], object] | None = None,
    ) -> None:
        self.stream = stream
        self.mon = mon
        self.tap = tap
        self.telnet = rfc2217.Rfc2217Server(mon.settings)
        self._send_lock = trio.Lock()
        self._resume = trio.Event()
        self._resume.set()
        self._opened = trio.Event()  # the client's open (and its purge) is over
        self._purged_input = False

    async def run(self) -> None:
        """Until the client leaves (EOF, reset, or a write that fails) or the monitor ends."""
        try:
            self.telnet.start()
            await self._flush()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._settle)
                nursery.start_soon(self._device_to_tcp)
                await self._tcp_to_device()
                nursery.cancel_scope.cancel()
        except* ClientGone:
            pass

    def _encode(self, data: bytes) -> bytes:
        return self.telnet.escape(data)

    async def _settle(self) -> None:
        with trio.move_on_after(OPEN_SETTLE_MAX):
            await self._opened.wait()
        self._opened.set()

    async def _send(self, data: bytes) -> None:
        """Write to the client; a client that is gone ends the bridge (``ClientGone``)."""
        if data:
            async with self._send_lock:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise ClientGone from None

    async def _flush(self) -> None:
        await self._send(self.telnet.data_to_send())

    async def _tcp_to_device(self) -> None:
        while True:
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except trio.BrokenResourceError:
                return
            if not data:
                return
            for event in self.telnet.receive_data(data):
                await self._apply(event)
            await self._flush()

    async def _apply(self, event: rfc2217.Rfc2217Event) -> None:
        match event:
            case rfc2217.DataReceived(data=data):
                self._opened.set()
                await self.mon.send(data)
            case rfc2217.SettingsRequested(changes=changes):
                await self.mon.set(**changes)
            case rfc2217.BreakRequested(on=on):
                await self.mon.set_break(on)
            case rfc2217.PurgeRequested(input=inp, output=out):
                if self._opened.is_set():
                    await self.mon.purge(inp, out)
                elif self._purged_input:
                    self._opened.set()  # the request after the open's input purge: open done
                else:
                    # Part of the client's open: what the board printed since the
                    # port opened is what a local open would show, so keep it.
                    self._purged_input = inp
            case rfc2217.FlowSuspended(suspended=True):
                self._resume = trio.Event()
            case rfc2217.FlowSuspended(suspended=False):
                self._resume.set()

    async def _device_to_tcp(self) -> None:
        while (item := await self.mon.receive()) is not None:
            if isinstance(item, bytes):
                if self.tap is not None:
                    self.tap(item)
                await self._opened.wait()
                await self._resume.wait()
                await self._send(self._encode(item))
            elif isinstance(item, ev.Lost | ev.Paused | ev.AgentWarning | ConnectionLost):
                note(_describe(item))
            elif isinstance(item, ev.Opened) and item.resumed or isinstance(item, Reconnected):
                note(f"{self.mon.port} is back")
            elif isinstance(item, ev.Applied):
                note(f"{self.mon.port}: {item.settings.describe()}")


class RawBridge(Bridge):
    """Bytes both ways, nothing else: for pyserial's ``socket://``, whose open and close
    cost nothing, where its RFC 2217 client polls for 0.35 s to open and sleeps 0.3 s to
    close (a suite that reopens the port per test pays that per test)."""

    async def run(self) -> None:
        self._opened.set()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._device_to_tcp)
                while data := await self._receive():
                    await self.mon.send(data)
                nursery.cancel_scope.cancel()
        except* ClientGone:
            pass

    async def _receive(self) -> bytes:
        try:
            return await self.stream.receive_some(RECEIVE_SIZE)
        except trio.BrokenResourceError:
            return b""

    def _encode(self, data: bytes) -> bytes:
        return data


def _describe(item: object) -> str:
    match item:
        case ev.Lost(port=port, reason=reason):
            return f"{port} disconnected ({reason}); waiting for it to come back"
        case ev.Paused(port=port, holder=holder):
            return f"{port} paused: {holder}"
        case ev.AgentWarning(message=message):
            return f"warning: {message}"
        case ConnectionLost(reason=reason):
            return f"connection lost: {reason}"
    return str(item)


def _first_message(group: BaseExceptionGroup) -> str:
    """One line for the first real error in a (nested) group."""
    exc = first_leaf(group)
    return str(exc) or type(exc).__name__


def peer_name(stream: trio.SocketStream) -> str:
    """Who connected to a local forward, for its log line ("127.0.0.1:50312")."""
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "a client"
    return f"{host}:{port}"
