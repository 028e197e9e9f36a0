"""``device forward --tcp``: a TCP server on the agent's side, served at a local port.

For GDB servers (OpenOCD on :3333, J-Link on :2331, pyOCD, probe-rs, QEMU's
gdbstub) next to the board: ``gdb -ex 'target remote 127.0.0.1:LOCAL'`` here
talks to them through the relay, end to end encrypted, with no port open on
the agent's machine.

    forward ── listener (loopback unless --listen names another address)
               ├── line: one relay connection and one session with the agent,
               │         opened at start and again after a loss, when needed
               └── connection, one per accepted socket ── call forward.tcp
                                                          ├── socket -> call
                                                          └── call -> socket

Every connection is its own call, so each has its own credit window: one
stalled connection never holds up another. Closing the listener cancels every
connection; cancelling a call makes the agent close its socket.
"""

from __future__ import annotations

from typing import Any

import trio

from pio_remote.client.api import AgentSession, Client, RemoteError, wait_result
from pio_remote.client.forward_serial import note, peer_name
from pio_remote.net import tunnel
from pio_remote.net.channel import Call, ChannelClosed
from pio_remote.net.link import RelayError
from pio_remote.wire import session

# Calls one session may have open, less a few for the session's own use.
MAX_CONNECTIONS = session.MAX_OPEN_CALLS - 4
SESSION_ERRORS = (RemoteError, RelayError, ChannelClosed)


class AgentLine:
    """One relay connection and one session with the agent, reopened after a loss."""

    def __init__(self, agent: str, connect_args: dict[str, Any], nursery: trio.Nursery) -> None:
        self.agent = agent
        self.connect_args = connect_args
        self._nursery = nursery
        self._current: AgentSession | None = None
        self._lock = trio.Lock()

    async def session(self) -> AgentSession:
        async with self._lock:
            if self._current is None or self._current.error is not None:
                opened = await self._nursery.start(self._hold)
                if isinstance(opened, Exception):
                    raise opened
                self._current = opened
            return self._current

    async def _hold(self, *, task_status: trio.TaskStatus[AgentSession | Exception]) -> None:
        started = False
        try:
            async with Client.connect(**self.connect_args) as client:
                async with client.session(self.agent) as sess:
                    task_status.started(sess)
                    started = True
                    await sess.wait_closed()
                    note(f"session ended: {sess.error}")
        except SESSION_ERRORS as exc:
            if not started:
                task_status.started(exc)
            else:
                note(str(exc))


class TcpForwarder:
    """Accepted local sockets, each carried to ``target`` on the agent by one call."""

    def __init__(self, line: AgentLine, target: str) -> None:
        self.line = line
        self.target = target
        self.open = 0

    async def check(self) -> list[dict[str, Any]]:
        """Fail now, before listening, if the agent does not allow the destination."""
        sess = await self.line.session()
        try:
            allowed = await sess.call("forward.list")
        except RemoteError as exc:
            if exc.code == "unknown_method":
                raise RemoteError(
                    f"agent '{sess.agent_id}' cannot forward TCP: update pio-remote on it"
                ) from None
            raise
        if not any(item.get("forward") == self.target for item in allowed):
            listed = ", ".join(str(item.get("forward")) for item in allowed) or "none"
            raise RemoteError(
                f"agent '{sess.agent_id}' does not forward to {self.target}: its owner must add "
                f'"{self.target}" to a [[forward]] allow = [...] list in the agent\'s agent.toml '
                f"(allowed now: {listed})",
                "forward_refused",
            )
        return list(allowed)

    async def handle(self, stream: trio.SocketStream) -> None:
        peer = peer_name(stream)
        async with stream:
            if self.open >= MAX_CONNECTIONS:
                note(f"refused {peer}: {MAX_CONNECTIONS} connections are open already")
                return
            self.open += 1
            try:
                note(f"{peer} connected")
                sess = await self.line.session()
                async with sess.open_call("forward.tcp", target=self.target) as call:
                    problem = await splice(stream, call)
                note(f"{peer} closed" + (f": {problem}" if problem else ""))
            except SESSION_ERRORS as exc:
                note(f"{peer} closed: {exc}")
            finally:
                self.open -= 1


async def splice(stream: trio.SocketStream, call: Call) -> str:
    """Carry one local socket over its call until the call ends; returns what went wrong.

    The call ends with the agent's RESULT, once both directions have closed, or
    early with an error (the destination refused or reset the connection). A
    local socket that breaks cancels the call when the caller leaves ``open_call``.
    """
    problem = ""
    async with trio.open_nursery() as nursery:

        async def up() -> None:
            nonlocal problem
            try:
                await tunnel.socket_to_call(stream, call)
            except tunnel.SOCKET_ERRORS as exc:
                problem = f"local connection broke: {exc}"
                nursery.cancel_scope.cancel()
            except ChannelClosed:
                pass  # the call has ended: the RESULT says how

        nursery.start_soon(up)
        try:
            await tunnel.call_to_socket(call, stream)
            await wait_result(call)
        except tunnel.SOCKET_ERRORS as exc:
            problem = f"local connection broke: {exc}"
        except SESSION_ERRORS as exc:
            problem = str(exc)
        nursery.cancel_scope.cancel()
    return problem
