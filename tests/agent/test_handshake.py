"""The agent's handshake decision, with no sockets: bytes in, a decision out."""

from __future__ import annotations

import json

import pytest

from pio_remote import e2e, session
from pio_remote.agent.handshake import INVITE_REFUSED, Accept, Refuse, TrustView, decide

AGENT_ID = "alice/lab-pi"
AGENT_KEY = e2e.generate_private_key()
CLIENT_KEY = e2e.generate_private_key()
INVITE_ID = e2e.new_invite_id()
SECRET = bytes(range(32))
HELLO = json.dumps({"version": session.VERSION}).encode()


def view(paired: bool = False, invite: bool = False) -> TrustView:
    return TrustView(
        invite_secret=lambda i: SECRET if invite and i == INVITE_ID else None,
        is_authorized=lambda key: paired and key == e2e.public_key(CLIENT_KEY),
    )


def initiator(psk: bytes = e2e.ZERO_PSK, invite_id: bytes | None = None) -> e2e.Initiator:
    return e2e.Initiator(
        CLIENT_KEY, e2e.public_key(AGENT_KEY), e2e.prologue(AGENT_ID), psk=psk, invite_id=invite_id
    )


def test_a_paired_client_is_accepted_and_both_sides_share_a_transport():
    client = initiator()
    decision = decide(client.first_message(HELLO), AGENT_ID, AGENT_KEY, view(paired=True))
    assert isinstance(decision, Accept)
    assert decision.client_key == e2e.public_key(CLIENT_KEY) and decision.pairing_invite is None
    payload, transport = client.read_response(decision.reply)
    assert json.loads(payload) == {"ok": True, "agent": AGENT_ID, "version": session.VERSION}
    assert decision.transport.decrypt(transport.encrypt(b"ping")) == b"ping"


def test_an_unpaired_client_gets_an_encrypted_refusal_telling_it_how_to_pair():
    client = initiator()
    decision = decide(client.first_message(), AGENT_ID, AGENT_KEY, view(paired=False))
    assert isinstance(decision, Refuse) and decision.reply is not None
    payload, _ = client.read_response(decision.reply)
    reply = json.loads(payload)
    assert reply["ok"] is False and reply["code"] == "not_paired"
    assert "pio-remote agent pair <invite>" in reply["message"]
    assert e2e.fingerprint(e2e.public_key(CLIENT_KEY)) in reply["message"]


def test_pairing_with_a_live_invite_is_accepted_for_pairing_only():
    client = initiator(SECRET, INVITE_ID)
    decision = decide(client.first_message(HELLO), AGENT_ID, AGENT_KEY, view(invite=True))
    assert isinstance(decision, Accept) and decision.pairing_invite == INVITE_ID


@pytest.mark.parametrize("hello", [b"", b"{}", b'{"version": 1}', b"[]", b'{"version": "2"}'])
def test_a_client_of_another_session_protocol_is_refused_in_one_line(hello):
    """A client that would send its input before the agent's credit (protocol 1) is told
    so in one line, instead of having its session broken by its first upload."""
    client = initiator()
    decision = decide(client.first_message(hello), AGENT_ID, AGENT_KEY, view(paired=True))
    assert isinstance(decision, Refuse) and decision.reply is not None
    reply = json.loads(client.read_response(decision.reply)[0])
    assert reply["ok"] is False and reply["code"] == "version"
    assert f"speaks session protocol {session.VERSION} and this client 1" in reply["message"]


def test_an_unknown_invite_is_closed_with_a_reason_and_no_reply():
    client = initiator(SECRET, INVITE_ID)
    decision = decide(client.first_message(), AGENT_ID, AGENT_KEY, view(invite=False))
    assert decision == Refuse(INVITE_REFUSED, None, decision.log)


def test_a_wrong_invite_secret_leaves_a_reply_nobody_can_read():
    """IKpsk2 mixes the PSK in at the responder's message: the agent cannot tell a wrong
    secret from the first message, but its reply and the whole session are useless."""
    client = initiator(bytes(32 * [7]), INVITE_ID)
    decision = decide(client.first_message(HELLO), AGENT_ID, AGENT_KEY, view(invite=True))
    assert isinstance(decision, Accept)
    with pytest.raises(e2e.HandshakeError):
        client.read_response(decision.reply)


def test_what_fails_authentication_gets_no_word_at_all():
    wrong_agent = e2e.Initiator(
        CLIENT_KEY, e2e.public_key(e2e.generate_private_key()), e2e.prologue(AGENT_ID)
    ).first_message()
    flipped = bytearray(initiator().first_message())
    flipped[-1] ^= 1
    for message in (wrong_agent, bytes(flipped), b"", b"\x00garbage"):
        decision = decide(message, AGENT_ID, AGENT_KEY, view(paired=True, invite=True))
        assert isinstance(decision, Refuse)
        assert decision.close_reason == "" and decision.reply is None, message
