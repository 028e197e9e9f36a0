"""The trio glue around a session, with an in-memory link instead of a relay."""

import pytest
import trio
import trio.testing

from pio_remote.net.channel import Call, ChannelClosed, SecureChannel
from pio_remote.wire import e2e, session


class FakeLink:
    """Collects what the channel sends; enough of Link for SecureChannel."""

    def __init__(self):
        self.sent: list[bytes] = []
        self.nursery = None

    async def send_data(self, channel: int, payload: bytes) -> None:
        self.sent.append(payload)

    def unregister(self, channel: int) -> None:
        pass

    async def close_channel(self, channel: int, reason: str = "") -> None:
        pass


def _transports():
    agent_key, client_key = e2e.generate_private_key(), e2e.generate_private_key()
    init = e2e.Initiator(client_key, e2e.public_key(agent_key), e2e.prologue("a/b"))
    resp = e2e.Responder(agent_key, e2e.prologue("a/b"))
    resp.read_first(e2e.parse_first_message(init.first_message()).noise)
    msg, t_agent = resp.respond()
    _, t_client = init.read_response(msg)
    return t_client, t_agent


async def test_eof_and_event_on_an_ended_call_raise_channel_closed():
    t_client, _ = _transports()
    chan = SecureChannel(FakeLink(), 1, t_client, session.Session(session.Role.CLIENT))
    call_id, message = chan.session.start_call("x")
    call = Call(chan, call_id, "x", {})
    agent = session.Session(session.Role.AGENT)
    agent.receive(message)
    chan.session.receive(agent.send_result(call_id, True))  # the agent ended it
    with pytest.raises(ChannelClosed, match="has ended"):
        await call.send_eof()
    with pytest.raises(ChannelClosed, match="has ended"):
        await call.send_event({"set": 1})


async def test_tampered_frame_fails_every_waiter_with_the_reason():
    t_client, t_agent = _transports()
    chan = SecureChannel(FakeLink(), 1, t_client, session.Session(session.Role.CLIENT))
    call_id, _ = chan.session.start_call("monitor")
    call = Call(chan, call_id, "monitor", {})
    chan.calls[call_id] = call
    from pio_remote.wire import envelope

    good = t_agent.encrypt(session.Session(session.Role.AGENT).pong(1))
    bad = bytearray(good)
    bad[-1] ^= 1
    chan.on_frame(envelope.Frame(envelope.FrameType.DATA, 1, bytes(bad)))
    with trio.fail_after(1), pytest.raises(ChannelClosed, match="altered in transit"):
        await call.receive()


class StuckLink(FakeLink):
    """A link whose relay takes nothing until ``release`` is set."""

    def __init__(self, nursery):
        super().__init__()
        self.nursery = nursery
        self.release = trio.Event()

    async def send_data(self, channel: int, payload: bytes) -> None:
        await self.release.wait()
        self.sent.append(payload)


async def test_a_ping_flood_gets_a_bounded_number_of_pong_tasks():
    from pio_remote.net.channel import MAX_PENDING_PONGS
    from pio_remote.wire import envelope

    t_client, t_agent = _transports()
    agent = session.Session(session.Role.AGENT)
    async with trio.open_nursery() as nursery:
        link = StuckLink(nursery)
        chan = SecureChannel(link, 1, t_client, session.Session(session.Role.CLIENT))
        for nonce in range(200):
            ping = t_agent.encrypt(agent.send_ping(nonce))
            chan.on_frame(envelope.Frame(envelope.FrameType.DATA, 1, ping))
        await trio.testing.wait_all_tasks_blocked()
        assert len(nursery.child_tasks) == MAX_PENDING_PONGS
        link.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert len(link.sent) == MAX_PENDING_PONGS
        assert not nursery.child_tasks
        # The cap is on pongs in flight: once they are out, pings are answered again.
        chan.on_frame(
            envelope.Frame(envelope.FrameType.DATA, 1, t_agent.encrypt(agent.send_ping(7)))
        )
        await trio.testing.wait_all_tasks_blocked()
        assert len(link.sent) == MAX_PENDING_PONGS + 1
