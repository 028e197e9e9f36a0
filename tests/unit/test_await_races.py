"""Orderings a fast peer can force around an ``await``, forced here deterministically.

Each fake link below answers *inside* the send that carries the request, so
the reply is dispatched before that send returns: what a relay on loopback
does now and then on a fresh machine.
"""

import trio

from pio_remote import e2e, envelope, session
from pio_remote.client import AgentSession, ClientChannel


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
                frame = envelope.Frame(envelope.FrameType.DATA, channel, self.t_agent.encrypt(reply))
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
