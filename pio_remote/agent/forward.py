"""The agent side of ``device forward --tcp``: reach a destination its owner allowed.

A client never chooses where the agent connects, just as it never chooses a
command line to run: ``forward.tcp`` is refused, before any socket is opened,
for a destination that no ``[[forward]] allow`` entry in agent.toml lists.

    forward.tcp ── connect to HOST:PORT (bounded by CONNECT_TIMEOUT)
                   ├── socket -> client   (tunnel.socket_to_call)
                   └── client -> socket   (tunnel.call_to_socket)

A ``[[forward]]`` entry may name the board's serial port (``port = ...``): while
any forwarded connection of a session is open, that session holds the port
exclusively (``PortRegistry.exclusive``), so nobody flashes or opens the board
under a debugger. gdb's reconnects and an IDE's second connection share the
session's one lease. Cancelling the call (the client closed its listener or
left) closes the socket and, with the last connection, releases the port.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from pio_remote.agent import gate, lease_calls
from pio_remote.agent.config import AgentConfig, ForwardConfig
from pio_remote.agent.handlers import CallContext, CallFailed, handler
from pio_remote.agent.serial.portlock import PortBusy, PortRegistry
from pio_remote.net import tunnel

if TYPE_CHECKING:
    from pio_remote.agent.state import AgentChannel

log = logging.getLogger("pio_remote.agent.forward")

# A GDB server or OpenOCD on the agent's own network answers at once; a
# destination that does not is down, and the client should hear so.
CONNECT_TIMEOUT = 10.0


def allowed(forwards: list[ForwardConfig], dest: str) -> ForwardConfig | None:
    """The agent.toml entry that allows ``dest`` (canonical HOST:PORT), or None."""
    for entry in forwards:
        if dest in _canonical(entry):
            return entry
    return None


def describe(forwards: list[ForwardConfig]) -> list[dict[str, Any]]:
    """What ``forward.list`` answers: one item per allowed destination."""
    return [
        {"forward": dest, "port": entry.port} for entry in forwards for dest in _canonical(entry)
    ]


def _canonical(entry: ForwardConfig) -> list[str]:
    """The entry's destinations as the agent compares them (see tunnel.canonical)."""
    out = []
    for text in entry.allow:
        try:
            out.append(tunnel.canonical(text))
        except ValueError:
            pass  # agent.toml's schema check already refused what cannot be a host:port
    return out


@handler("forward.list")
async def forward_list(ctx: CallContext) -> list[dict[str, Any]]:
    return describe(ctx.agent.config.forward)


@handler("forward.tcp")
async def forward_tcp(ctx: CallContext, target: str) -> dict[str, Any]:
    """Carry one TCP connection to ``target`` until both sides have closed it."""
    agent = ctx.agent
    try:
        dest = tunnel.canonical(target)  # its type was checked against the signature
    except ValueError as exc:
        raise CallFailed("bad_params", f"forward.tcp: {exc}") from None
    entry = allowed(agent.config.forward, dest)
    if entry is None:
        listed = ", ".join(d["forward"] for d in describe(agent.config.forward)) or "none"
        raise CallFailed(
            "forward_refused",
            f"agent '{agent.agent_id}' does not forward to {dest}: its owner allows only the "
            f"destinations in agent.toml's [[forward]] allow = [...] (now: {listed}); "
            f'add "{dest}" there and restart the agent',
        )
    holder = f"a debug session through {dest} by {ctx.channel.holder}"
    try:
        async with session_leases(ctx.channel).hold(_port_key(agent.config, entry.port), holder):
            stream = await _connect(agent.agent_id, dest)
            log.info("forward to %s for %s", dest, ctx.channel.holder)
            async with stream:
                sent, received = await carry(ctx, stream, dest)
    except PortBusy as exc:
        if exc.lease is not None:
            raise lease_calls.busy_failure(agent, exc, can_wait=False) from None
        raise CallFailed(
            "port_busy", f"{exc} on agent '{agent.agent_id}': the forward to {dest} needs it"
        ) from None
    log.info("forward to %s closed: %d bytes sent, %d received", dest, sent, received)
    return {"target": dest, "to_target": sent, "from_target": received}


async def _connect(agent_id: str, dest: str) -> trio.SocketStream:
    host, port = tunnel.split_hostport(dest)
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            return await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as exc:
        why = getattr(exc, "strerror", None) or str(exc) or f"no answer in {CONNECT_TIMEOUT:g} s"
        raise CallFailed(
            "connect_failed",
            f"agent '{agent_id}' cannot connect to {dest}: {why} (is its server running?)",
        ) from None


async def carry(ctx: CallContext, stream: trio.SocketStream, dest: str) -> tuple[int, int]:
    """Both directions until each has ended; a reset ends the call with an error."""
    counts = [0, 0]
    lost: list[str] = []

    async def guarded(index: int, copy: Any, *args: Any) -> None:
        try:
            counts[index] = await copy(*args)
        except tunnel.SOCKET_ERRORS as exc:
            lost.append(str(exc) or type(exc).__name__)
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(guarded, 1, tunnel.socket_to_call, stream, ctx.call)
        await guarded(0, tunnel.call_to_socket, ctx.call, stream)
    if lost:
        raise CallFailed("connection_lost", f"the connection to {dest} broke: {lost[0]}")
    return counts[0], counts[1]


def _port_key(config: AgentConfig, port: str | None) -> str | None:
    """The key monitors and uploads lock this board under (gate.port): one lock per board."""
    if port is None:
        return None
    found = gate.offered_port(config, port, network=False)
    return found.key if found is not None else port


# ---- one lease per board port per session --------------------------------------------------


@dataclass
class _Lease:
    users: int = 0
    ready: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    released: trio.Event = field(default_factory=trio.Event)
    error: PortBusy | None = None


class SharedLeases:
    """The forwarded connections of one session share one exclusive lease per port.

    The lease lives in a task of the session's nursery, so it outlives any one
    connection and ends with the last one, or with the session.
    """

    def __init__(self, registry: PortRegistry, nursery: trio.Nursery) -> None:
        self._registry = registry
        self._nursery = nursery
        self._leases: dict[str, _Lease] = {}

    @asynccontextmanager
    async def hold(self, port: str | None, holder: str) -> AsyncIterator[None]:
        if port is None:
            yield
            return
        while True:
            # A lease whose last user just left is still letting go: wait for it.
            while (lease := self._leases.get(port)) is not None and lease.done.is_set():
                await lease.released.wait()
            if lease is None:
                lease = self._leases[port] = _Lease()
                try:
                    await self._nursery.start(self._keep, port, holder, lease)
                except PortBusy as exc:
                    lease.error = exc
                finally:
                    lease.ready.set()
            await lease.ready.wait()
            if lease.error is not None:
                raise lease.error
            # Its last user may have left while we waited for ``ready``: that lease is
            # letting the port go, so joining it would hold nothing. Look again.
            if not lease.done.is_set():
                break
        lease.users += 1
        try:
            yield
        finally:
            lease.users -= 1
            if lease.users == 0:
                lease.done.set()
                # Released before this call's RESULT goes out, so whoever hears
                # the forward ended finds the port free.
                with trio.CancelScope(shield=True):
                    await lease.released.wait()

    async def _keep(
        self, port: str, holder: str, lease: _Lease, *, task_status: trio.TaskStatus[None]
    ) -> None:
        try:
            async with self._registry.exclusive(port, holder):
                task_status.started()
                await lease.done.wait()
        finally:
            if self._leases.get(port) is lease:
                del self._leases[port]
            lease.released.set()


_LEASES: weakref.WeakKeyDictionary[AgentChannel, SharedLeases] = weakref.WeakKeyDictionary()


def session_leases(channel: AgentChannel) -> SharedLeases:
    leases = _LEASES.get(channel)
    if leases is None:
        assert channel.nursery is not None
        leases = _LEASES[channel] = SharedLeases(channel.agent.ports, channel.nursery)
    return leases
