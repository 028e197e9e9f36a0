"""The client library: everything the CLI does, as an async (trio) API.

    async with Client.connect() as client:
        for agent in await client.list_agents(): ...
        async with client.session("lab-pi") as agent:
            ports = await agent.call("device.list")
        results = await client.fan_out(["lab-pi", "ci-1"], "device.list")

The CLI is a thin layer over this module; see docs/api.md.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from pio_remote import home
from pio_remote.client import pins
from pio_remote.client.boards import BoardCalls
from pio_remote.client.handshake import (
    EarlyOpen,
    make_initiator,
    open_early,
    pinned_guess,
    queue_into,
)
from pio_remote.net import link
from pio_remote.net.channel import Call, ChannelClosed, SecureChannel
from pio_remote.net.link import Link, RelayError
from pio_remote.net.nodes import NodeLinks
from pio_remote.wire import e2e, session
from pio_remote.wire.envelope import Frame, FrameType
from pio_remote.wire.invite import Invite

HANDSHAKE_TIMEOUT = 10.0
# Device lease ids a CI job holds (``pio-remote device lock``), comma-separated.
ENV_LEASE = "PIO_REMOTE_LEASE"
# The relay's CLOSE reason for a channel it closed because one end read too
# slowly ("slow_consumer: <who> read too slowly[: detail]"; docs/relay.md).
SLOW_CONSUMER = "slow_consumer"
# Per-agent deadline in fan-out commands: an offline or stuck agent becomes an
# error entry after this, and never holds up the others.
DEFAULT_AGENT_TIMEOUT = 10.0


class RemoteError(Exception):
    """Something the user must see: it names the agent, the problem and the fix.

    ``code`` is the agent's (or the client's) error code; the subclasses below are the
    codes a script most often handles, so ``except PortLeasedError`` needs no string.
    """

    CODE = "error"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code or self.CODE

    @staticmethod
    def from_code(code: str, message: str) -> RemoteError:
        """The typed exception for ``code``, or a plain RemoteError carrying it."""
        return ERROR_TYPES.get(code, RemoteError)(message, code)


class PortLeasedError(RemoteError):
    """Another client (or another of this client's jobs) leases the port."""

    CODE = "port_leased"


class PortBusyError(RemoteError):
    """A monitor, upload or debug session has the port right now."""

    CODE = "port_busy"


class UnknownPortError(RemoteError):
    """The agent does not offer that port (see ``ports()``)."""

    CODE = "unknown_port"


class NoPowerControlError(RemoteError):
    """The agent's owner configured no ``[[power]]`` entry for that port."""

    CODE = "no_power"


class CommandFailedError(RemoteError):
    """An owner's power command, or an uploader, ran and failed."""

    CODE = "power_failed"


class BadParamsError(RemoteError):
    """The agent refused a parameter (its message names it)."""

    CODE = "bad_params"


ERROR_TYPES: dict[str, type[RemoteError]] = {
    cls.CODE: cls for cls in (PortLeasedError, PortBusyError, UnknownPortError, NoPowerControlError)
}
ERROR_TYPES.update(
    power_failed=CommandFailedError, upload_failed=CommandFailedError, bad_params=BadParamsError
)


@dataclass(frozen=True)
class AgentInfo:
    agent: str
    owner: str
    name: str
    key: bytes
    connected_at: str
    shared: bool

    @property
    def fingerprint(self) -> str:
        return e2e.fingerprint(self.key)


class ClientChannel(SecureChannel):
    def __init__(self, agent_id: str, *args: Any):
        super().__init__(*args)
        self.agent_id = agent_id

    def describe_close(self, reason: str) -> str:
        code, _, detail = reason.partition(": ")
        if code == SLOW_CONSUMER and detail:
            hint = ""
            if detail.startswith("this client "):
                hint = ": a client that is suspended or too busy to read falls behind; retry"
            return f"{self._by_relay} (slow_consumer): {detail}{hint}"
        return f"agent '{self.agent_id}' closed the session" + (f": {reason}" if reason else "")

    @property
    def _by_relay(self) -> str:
        return f"the relay closed the session with agent '{self.agent_id}'"

    def fail(self, reason: str, *, notify: bool = True) -> None:
        if not reason.startswith(("agent '", self._by_relay)):
            reason = f"session with agent '{self.agent_id}' aborted: {reason}"
        super().fail(reason, notify=notify)

    def handle_other(self, event: session.SessionEvent) -> None:
        match event:
            case session.CallResult(call_id=call_id):
                call = self.calls.pop(call_id, None)
                if call is not None:
                    call.inbox.put(event)
                    call.credit_granted()
            case session.GoAway(code=code, message=message):
                self.fail(f"agent '{self.agent_id}' ended the session ({code}): {message}")


class AgentSession(BoardCalls):
    """An open, authenticated session with one agent; the typed calls (``ports()``,
    ``upload()``, ``lock()``...) come from ``BoardCalls`` (boards.py)."""

    def __init__(self, channel: ClientChannel):
        self._channel = channel
        self.agent_id = channel.agent_id

    @property
    def error(self) -> ChannelClosed | None:
        """Why the session ended, or None while it is open."""
        return self._channel.error

    async def wait_closed(self) -> None:
        """Return once the session has ended (agent, relay or this client closed it)."""
        await self._channel.closed.wait()

    @asynccontextmanager
    async def open_call(self, method: str, **params: Any) -> AsyncIterator[Call]:
        """A streaming call; leaving the block early cancels it on the agent."""
        chan = self._channel
        chan.check()
        started: list[Call] = []

        def build() -> bytes:
            call_id, message = chan.session.start_call(method, params)
            started.append(Call(chan, call_id, method, params))
            chan.calls[call_id] = started[0]
            return message

        await chan.send(build)
        # Kept, not looked up again: a fast RESULT has already taken the call out of
        # ``chan.calls`` (and put itself in the call's inbox) by the time send returns.
        call = started[0]
        try:
            yield call
        finally:
            if call.result is None and chan.session.is_open(call.call_id) and chan.error is None:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        # The session may have ended the call (its RESULT came) while
                        # this send waited for the lock: then there is nothing to cancel.
                        await chan.send(lambda: call._open_session().send_cancel(call.call_id))
                    except ChannelClosed:
                        pass

    async def call(self, method: str, **params: Any) -> Any:
        """A plain request/response call; raises RemoteError with the agent's message."""
        async with self.open_call(method, **params) as call:
            return await wait_result(call)


async def wait_result(call: Call) -> Any:
    while call.result is None:
        await call.receive()
    result = call.result
    if not result.ok:
        raise RemoteError.from_code(result.error_code, result.error_message or result.error_code)
    return result.value


class Client:
    """A connection to the relay, plus this machine's identity and pinned keys."""

    def __init__(
        self, lnk: Link, home_path: Path, identity: home.Identity, nodes: NodeLinks | None = None
    ):
        self.link = lnk
        self.home = home_path
        self.identity = identity
        # Presented to every agent session, so this job's commands may use its boards.
        self.leases = [x for x in os.environ.get(ENV_LEASE, "").split(",") if x.strip()]
        self.nodes = nodes
        self._early: dict[str, EarlyOpen] = {}  # channels opened with HELLO (connect)

    @property
    def account(self) -> str:
        return self.link.account

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        relay: str | None = None,
        token: str | None = None,
        home_path: Path | None = None,
        agents: Sequence[str] = (),
    ) -> AsyncIterator[Client]:
        """Connect to the relay; sessions with ``agents`` start in the same packets.

        For each of ``agents`` whose key is pinned, OPEN and Noise message 1 ride
        behind HELLO, so ``session()`` with it finds the agent's answer already
        on its way. A ref that is never used costs one idle channel.
        """
        home_path = home_path or home.home_dir()
        creds = home.load_credentials(home_path, relay, token)
        identity = home.load_identity(home_path)
        early: dict[str, EarlyOpen] = {}

        def prepare(lnk: Link) -> list[bytes]:
            frames: list[bytes] = []
            for ref in dict.fromkeys(agents):
                guess = pinned_guess(home_path, ref, None, identity.public)
                if guess is not None:
                    initiator, first = make_initiator(identity, *guess, None)
                    pending, receive = open_early(lnk, ref, first)
                    early[ref] = EarlyOpen(pending, receive, guess, initiator)
                    frames += pending.frames
            return frames

        body_error: Exception | None = None
        async with (
            link.connect(creds.relay, creds.token, {"role": "client"}, prepare=prepare) as lnk,
            trio.open_nursery() as nursery,  # links to other relay nodes (nodes.py)
        ):
            try:
                client = cls(
                    lnk, home_path, identity, NodeLinks(lnk, creds.relay, creds.token, nursery)
                )
                client._early = early
                yield client
            except Exception as exc:  # re-raised plain, not inside an ExceptionGroup
                body_error = exc
            nursery.cancel_scope.cancel()
        if body_error is not None:
            raise body_error

    async def list_agents(self) -> list[AgentInfo]:
        return [
            AgentInfo(
                a["agent"],
                a["owner"],
                a["name"],
                bytes.fromhex(a["key"]),
                a.get("connected_at", ""),
                bool(a.get("shared")),
            )
            for a in await self.link.list_agents()
        ]

    @asynccontextmanager
    async def session(self, agent_ref: str) -> AsyncIterator[AgentSession]:
        channel = await self._handshake(agent_ref, None)
        try:
            agent = AgentSession(channel)
            # Waits on purpose: the agent runs each call in a task of its own, so a
            # call sent before lease.use has answered could run without the lease.
            for lease in self.leases:
                try:
                    await agent.call("lease.use", lease=lease.strip())
                except RemoteError as exc:
                    if exc.code != "unknown_method":  # an agent without leases: nothing held
                        raise
            yield agent
        finally:
            if channel.error is None:
                channel.fail("closed by client")

    async def pair(self, invite_text: str, label: str | None = None) -> str:
        """Pair with the agent that made the invite; pins its key. Returns the agent id.

        An agent is its key, not its name: the invite's name is what `agent invite`
        guessed, and the agent may run under another (`agent start -n lab-pi`). So
        the agent is found by the key the invite carries, among the online agents
        this account can reach.
        """
        invite = Invite.decode(invite_text)
        # A damaged known_agents.json must fail before the invite is used up.
        pins.pinned_key(self.home, "")
        matches = [a for a in await self.list_agents() if a.key == invite.agent_key]
        if not matches:
            raise RemoteError(
                f"the invite's agent (key {e2e.fingerprint(invite.agent_key)}, made as "
                f"'{invite.agent_name}') is offline or not shared with account "
                f"'{self.account}': start it with 'pio-remote agent start' on its machine "
                "(with '-s ACCOUNT' to share it with another account), then pair again",
                "offline",
            )
        # Several names with one key are one agent home (one allow-list): pin them all.
        matches.sort(key=lambda a: (a.name != invite.agent_name, a.agent))
        channel = await self._handshake(matches[0].agent, invite)
        try:
            await AgentSession(channel).call("pair.confirm", label=label or socket.gethostname())
        finally:
            channel.fail("closed by client")
        for agent in matches:
            pins.pin_agent(self.home, agent.agent, invite.agent_key)
        return channel.agent_id

    async def fan_out(
        self,
        agent_refs: list[str],
        method: str,
        timeout: float = DEFAULT_AGENT_TIMEOUT,
        **params: Any,
    ) -> dict[str, Any]:
        """Run one call on many agents at once; each gets its own deadline.

        The result maps each agent to its value, or to a RemoteError instance.
        """

        async def call(agent: AgentSession) -> Any:
            return await agent.call(method, **params)

        return await self.fan_out_with(agent_refs, call, timeout)

    async def fan_out_with(
        self,
        agent_refs: list[str],
        work: Callable[[AgentSession], Awaitable[Any]],
        timeout: float = DEFAULT_AGENT_TIMEOUT,
    ) -> dict[str, Any]:
        """``fan_out`` for several calls per agent: ``work`` gets each agent's session."""
        results: dict[str, Any] = {}

        async def one(ref: str) -> None:
            try:
                with trio.fail_after(timeout):
                    async with self.session(ref) as agent:
                        results[agent.agent_id] = await work(agent)
            except trio.TooSlowError:
                results[ref] = RemoteError(f"agent '{ref}' did not answer within {timeout:g} s")
            except (RemoteError, ChannelClosed, RelayError) as exc:
                results[ref] = exc if isinstance(exc, RemoteError) else RemoteError(str(exc))

        async with trio.open_nursery() as nursery:
            for ref in agent_refs:
                nursery.start_soon(one, ref)
        return results

    # ---- handshake ------------------------------------------------------------------

    async def _open(
        self, agent_ref: str, handler: Any, first: bytes | None = None
    ) -> tuple[Link, int, link.Opened]:
        """OPEN a channel to ``agent_ref`` over the link (relay node) that reaches it."""
        if self.nodes is None or not self.nodes.clustered:
            return self.link, *await self.link.open_channel(agent_ref, handler, first=first)
        ref, node = await self.nodes.locate(agent_ref)
        lnk = await self.nodes.link_for(ref, node)
        return lnk, *await lnk.open_channel(ref, handler, first=first)

    async def _open_early(
        self, agent_ref: str, first: bytes | None
    ) -> tuple[Link, int, link.Opened, trio.MemoryReceiveChannel[Frame]]:
        """OPEN a channel whose frames queue up until the handshake is done."""
        send, receive = trio.open_memory_channel[Frame](4)
        return *await self._open(agent_ref, queue_into(send), first), receive

    async def _first_open(
        self, agent_ref: str, invite: Invite | None
    ) -> tuple[Link, int, link.Opened, Any, EarlyOpen | None]:
        """OPEN, with message 1 behind it when the agent's key is pinned.

        Returns the link, channel, OPENED and frame queue, and what message 1
        was built with (None: not sent yet).
        """
        pre = self._early.pop(agent_ref, None)
        if pre is not None and invite is None and not (self.nodes and self.nodes.clustered):
            # Sent with HELLO when we connected; only its answer is left to wait for.
            channel_id, opened = await self.link.finish_open(pre.pending)
            return self.link, channel_id, opened, pre.receive, pre
        if pre is not None:
            self.link.abandon(pre.pending)
        guess = (
            None
            if invite is not None
            else pinned_guess(self.home, agent_ref, self.account, self.identity.public)
        )
        if guess is None:
            return *await self._open_early(agent_ref, None), None
        initiator, first = make_initiator(self.identity, *guess, None)
        lnk, channel_id, opened, receive = await self._open_early(agent_ref, first)
        return lnk, channel_id, opened, receive, EarlyOpen(None, receive, guess, initiator)

    async def _handshake(self, agent_ref: str, invite: Invite | None) -> ClientChannel:
        lnk, channel_id, opened, receive, pre = await self._first_open(agent_ref, invite)
        agent_id = opened.agent_id
        try:
            expected = self._expected_key(agent_id, opened.key, invite)
            if pre is not None and pre.guess != (agent_id, expected):
                # Our message 1 was for another agent or key: the agent drops it.
                await lnk.close_channel(channel_id)
                lnk, channel_id, opened, receive = await self._open_early(agent_id, None)
                agent_id = opened.agent_id
                expected = self._expected_key(agent_id, opened.key, invite)
                pre = None
            if pre is None:
                initiator, first = make_initiator(self.identity, agent_id, expected, invite)
                await lnk.send_data(channel_id, first)
            else:
                initiator = pre.initiator
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                frame = await receive.receive()
            if frame.type is FrameType.CLOSE:
                why = frame.text() or "no reason given"
                raise RemoteError(f"agent '{agent_id}' refused the session: {why}", "refused")
            try:
                payload, transport = initiator.read_response(frame.payload)
            except e2e.HandshakeError:
                raise RemoteError(
                    f"handshake with agent '{agent_id}' failed: the peer does not hold the key "
                    f"{e2e.fingerprint(expected)} pinned for it, or the traffic was altered",
                    "handshake",
                ) from None
            reply = json.loads(payload or b"{}")
            if not reply.get("ok"):
                raise RemoteError(str(reply.get("message", "refused")), str(reply.get("code")))
            if reply.get("version") != session.VERSION:
                raise RemoteError(
                    f"agent '{agent_id}' speaks session protocol {reply.get('version')!r} and "
                    f"this client {session.VERSION}: install the same pio-remote version on both",
                    "version",
                )
        except BaseException:
            await lnk.close_channel(channel_id)
            raise
        channel = ClientChannel(
            agent_id, lnk, channel_id, transport, session.Session(session.Role.CLIENT)
        )
        lnk.register(channel_id, channel.on_frame)
        # Frames the link read while we waited for our turn after the reply (the
        # agent's CLOSE, say) went to ``early``: they are the channel's now.
        while True:
            try:
                channel.on_frame(receive.receive_nowait())
            except trio.WouldBlock:
                break
        return channel

    def _expected_key(self, agent_id: str, offered: bytes, invite: Invite | None) -> bytes:
        """The key we will accept for this agent; a mismatch names both fingerprints."""
        if invite is not None:
            expected = invite.agent_key
            source = "the invite carries"
        elif offered == self.identity.public:
            return offered  # the agent runs with this machine's own identity
        else:
            pinned = pins.pinned_key(self.home, agent_id)
            if pinned is None:
                raise RemoteError(
                    f"agent '{agent_id}' is not paired with this client: run 'pio-remote agent "
                    "pair <invite>' (get an invite with 'pio-remote agent invite' on the agent)",
                    "not_paired",
                )
            expected, source = pinned, "this client pinned"
        if offered != expected:
            raise RemoteError(
                f"agent '{agent_id}' presents key {e2e.fingerprint(offered)}, but {source} "
                f"{e2e.fingerprint(expected)}: refusing to connect. If the agent was reinstalled, "
                "pair again with a new invite; otherwise the relay or the agent is not who it "
                "claims to be",
                "key_mismatch",
            )
        return expected
