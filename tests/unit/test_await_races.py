"""Orderings a fast peer can force around an ``await``, forced here deterministically.

Each fake link below answers *inside* the send that carries the request, so
the reply is dispatched before that send returns: what a relay on loopback
does now and then on a fresh machine.
"""

import json

import pytest
import trio
import trio.testing

from pio_remote.client.api import AgentSession, ClientChannel
from pio_remote.wire import e2e, envelope, session


def _transports() -> tuple[e2e.Transport, e2e.Transport]:
    agent_key, client_key = e2e.generate_private_key(), e2e.generate_private_key()
    init = e2e.Initiator(client_key, e2e.public_key(agent_key), e2e.prologue("a/b"))
    resp = e2e.Responder(agent_key, e2e.prologue("a/b"))
    resp.read_first(e2e.parse_first_message(init.first_message()).noise)
    msg, t_agent = resp.respond()
    _, t_client = init.read_response(msg)
    return t_client, t_agent


class AnsweringLink:
    """An agent behind a link that answers each CALL with its RESULT before send returns."""

    def __init__(self, t_agent: e2e.Transport):
        self.t_agent = t_agent
        self.agent = session.Session(session.Role.AGENT)
        self.channel: ClientChannel | None = None
        self.nursery = None

    async def send_data(self, channel: int, payload: bytes) -> None:
        for event in self.agent.receive(self.t_agent.decrypt(payload)):
            if isinstance(event, session.CallStarted):
                reply = self.agent.send_result(event.call_id, True, {"echo": event.method})
                sealed = self.t_agent.encrypt(reply)
                frame = envelope.Frame(envelope.FrameType.DATA, channel, sealed)
                assert self.channel is not None
                self.channel.on_frame(frame)  # the RESULT lands before this send returns
        await trio.lowlevel.checkpoint()

    def unregister(self, channel: int) -> None:
        pass

    async def close_channel(self, channel: int, reason: str = "") -> None:
        pass


async def test_a_result_that_arrives_before_the_call_send_returns_is_not_lost():
    t_client, t_agent = _transports()
    link = AnsweringLink(t_agent)
    chan = ClientChannel("alice/lab-pi", link, 1, t_client, session.Session(session.Role.CLIENT))
    link.channel = chan
    with trio.fail_after(5):
        assert await AgentSession(chan).call("device.list") == {"echo": "device.list"}
        # and again: the session's call table is left clean for the next call
        assert await AgentSession(chan).call("device.info") == {"echo": "device.info"}
    assert chan.calls == {}


class HandshakeLink:
    """A relay and agent that answer the client's handshake and close the channel at once.

    Both frames reach the link's handler for the channel before the client's
    task runs again, as when they arrive in one read.
    """

    def __init__(self, agent_private: bytes):
        self.agent_private = agent_private
        self.handler = None
        self.nursery = None
        self.node = None
        self.account = "alice"
        self.registered: dict[int, object] = {}

    async def open_channel(self, agent_ref, handler, first=None):
        from pio_remote.net.link import Opened

        self.handler = handler
        if first is not None:  # message 1 rode with OPEN
            await self.send_data(7, first)
        return 7, Opened("alice/lab-pi", e2e.public_key(self.agent_private))

    async def send_data(self, channel: int, payload: bytes) -> None:
        if self.handler is not None:  # the client's first handshake message
            first = e2e.parse_first_message(payload)
            resp = e2e.Responder(self.agent_private, e2e.prologue("alice/lab-pi"))
            resp.read_first(first.noise)
            reply, _ = resp.respond(json.dumps({"ok": True, "version": session.VERSION}).encode())
            handler, self.handler = self.handler, None
            handler(envelope.Frame(envelope.FrameType.DATA, channel, reply))
            handler(envelope.Frame(envelope.FrameType.CLOSE, channel, b"agent stopping"))
        await trio.lowlevel.checkpoint()

    def register(self, channel: int, handler) -> None:
        self.registered[channel] = handler

    def unregister(self, channel: int) -> None:
        self.registered.pop(channel, None)

    async def close_channel(self, channel: int, reason: str = "") -> None:
        pass


async def test_a_close_right_behind_the_handshake_reply_reaches_the_client_session(tmp_path):
    from pio_remote import home
    from pio_remote.client.api import Client
    from pio_remote.net.channel import ChannelClosed

    identity = home.load_identity(tmp_path)  # the agent runs with this machine's key
    client = Client(HandshakeLink(identity.private), tmp_path, identity)
    channel = await client._handshake("lab-pi", None)
    with trio.fail_after(5):
        await channel.closed.wait()  # not left waiting for an answer that cannot come
    assert isinstance(channel.error, ChannelClosed)
    assert "agent stopping" in str(channel.error)


class AgentSideLink:
    """The agent's link: records what the agent sends and which handler it registers."""

    def __init__(self, nursery):
        self.nursery = nursery
        self.sent: list[bytes] = []
        self.closed: list[int] = []

    def register(self, channel: int, handler) -> None:
        pass

    def unregister(self, channel: int) -> None:
        pass

    async def send_data(self, channel: int, payload: bytes) -> None:
        self.sent.append(payload)
        await trio.lowlevel.checkpoint()

    async def close_channel(self, channel: int, reason: str = "") -> None:
        self.closed.append(channel)


async def test_a_client_that_gives_up_right_after_its_handshake_frees_the_agent_session(
    tmp_path,
):
    from pio_remote import home
    from pio_remote.agent.config import AgentConfig
    from pio_remote.agent.service import serve_session
    from pio_remote.agent.state import AgentState

    identity = home.load_identity(tmp_path)
    agent = AgentState("lab-pi", tmp_path, identity, AgentConfig(), agent_id="alice/lab-pi")
    init = e2e.Initiator(
        identity.private, identity.public, e2e.prologue("alice/lab-pi"), psk=e2e.ZERO_PSK
    )
    send, early = trio.open_memory_channel[envelope.Frame](2)
    # The handshake and the client's CLOSE (Ctrl-C, a fan-out deadline) in one read.
    send.send_nowait(
        envelope.Frame(
            envelope.FrameType.DATA,
            3,
            init.first_message(json.dumps({"version": session.VERSION}).encode()),
        )
    )
    send.send_nowait(envelope.Frame(envelope.FrameType.CLOSE, 3, b""))
    async with trio.open_nursery() as nursery:
        link = AgentSideLink(nursery)
        with trio.fail_after(5):
            ticket = agent.pending.admit("alice")
            await serve_session(agent, link, 3, "alice", early, ticket)
    assert agent.sessions == 0


async def test_an_upload_right_behind_another_waits_for_the_monitor_to_pause_again():
    """Two uploads back to back on a monitored port: the second enters before the
    monitor task has run since the first ended. It must still wait for its own
    pause, and the monitor must not reopen the port under it."""
    from pio_remote.agent.serial.portlock import PortRegistry

    registry = PortRegistry()
    port_open = True

    async def monitor(lease) -> None:  # the monitor's side of the pause protocol
        nonlocal port_open
        while True:
            await lease.pause_requested.wait()
            port_open = False
            lease.paused()
            await lease.resumed()
            port_open = True

    with trio.fail_after(5):
        async with registry.monitor("/dev/ttyACM0", "alice") as lease, trio.open_nursery() as n:
            n.start_soon(monitor, lease)
            await trio.testing.wait_all_tasks_blocked()
            async with registry.exclusive("/dev/ttyACM0", "upload 1"):
                assert not port_open
            async with registry.exclusive("/dev/ttyACM0", "upload 2"):  # no checkpoint between
                await trio.testing.wait_all_tasks_blocked()
                assert not port_open, "the monitor reopened the port during the second upload"
            await trio.testing.wait_all_tasks_blocked()
            assert port_open
            n.cancel_scope.cancel()


class GatedLink:
    """A link whose relay takes a frame only when ``gate`` is set (while closed, the
    channel's send lock stays held by whoever is sending)."""

    def __init__(self):
        self.sent: list[bytes] = []
        self.nursery = None
        self.gate = trio.Event()

    async def send_data(self, channel: int, payload: bytes) -> None:
        await self.gate.wait()
        self.sent.append(payload)

    def unregister(self, channel: int) -> None:
        pass

    async def close_channel(self, channel: int, reason: str = "") -> None:
        pass


async def _result_arrives_while_waiting_for_the_lock(body) -> None:
    """Start a call; then, with the channel's send lock held by a stalled send, run
    ``body(call)`` until it waits for the lock, and deliver the call's RESULT
    before the lock is free again."""
    t_client, t_agent = _transports()
    link = GatedLink()
    link.gate.set()
    chan = ClientChannel("alice/lab-pi", link, 1, t_client, session.Session(session.Role.CLIENT))
    agent = session.Session(session.Role.AGENT)

    async def result_then_unstall(call_id: int) -> None:
        await trio.testing.wait_all_tasks_blocked()  # ``body`` waits for the lock now
        result = agent.send_result(call_id, False, code="busy", message="port busy")
        chan.on_frame(envelope.Frame(envelope.FrameType.DATA, 1, t_agent.encrypt(result)))
        link.gate.set()

    async with trio.open_nursery() as nursery:
        async with AgentSession(chan).open_call("upload", size=10) as call:
            (started,) = agent.receive(t_agent.decrypt(link.sent[-1]))
            link.gate = trio.Event()  # the relay stalls: the next send holds the lock
            nursery.start_soon(chan.send, lambda: chan.session.send_ping(1))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(result_then_unstall, started.call_id)
            await body(call)


async def test_data_sent_while_the_result_arrives_ends_with_channel_closed_not_a_crash():
    from pio_remote.net.channel import ChannelClosed

    async def send_data(call) -> None:
        with pytest.raises(ChannelClosed, match="has ended"):
            await call.send(b"0123456789")

    with trio.fail_after(5):
        await _result_arrives_while_waiting_for_the_lock(send_data)


async def test_leaving_a_call_whose_result_arrives_meanwhile_is_quiet():
    async def leave_early(call) -> None:
        pass  # the block's exit cancels the call: it waits for the lock, and the RESULT comes

    with trio.fail_after(5):
        await _result_arrives_while_waiting_for_the_lock(leave_early)


async def test_a_forward_joining_a_lease_as_its_last_user_leaves_still_holds_the_port():
    """Two forwarded connections of one session share one exclusive lease on a port.
    The second joins while the first leaves: it must end up holding the port, not
    a lease that is letting it go. Which of the two runs first after the join is
    trio's choice (it shuffles), so the join is tried until both orders came up."""
    from pio_remote.agent.forward import SharedLeases
    from pio_remote.agent.serial.portlock import PortBusy, PortRegistry

    registry = PortRegistry()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            leases = SharedLeases(registry, nursery)
            for _ in range(40):
                first_in, first_leave, second_in, second_leave = (trio.Event() for _ in range(4))

                async def connection(inside: trio.Event, leave: trio.Event) -> None:
                    async with leases.hold("/dev/ttyACM0", "alice"):
                        inside.set()
                        await leave.wait()

                nursery.start_soon(connection, first_in, first_leave)
                await first_in.wait()
                await trio.testing.wait_all_tasks_blocked()
                first_leave.set()
                nursery.start_soon(connection, second_in, second_leave)
                await second_in.wait()
                await trio.testing.wait_all_tasks_blocked()
                # While the second connection is in, nobody else may take the port.
                try:
                    async with registry.exclusive("/dev/ttyACM0", "mallory"):
                        raise AssertionError("the port was free while a forward held it")
                except PortBusy:
                    pass
                second_leave.set()
                await trio.testing.wait_all_tasks_blocked()
