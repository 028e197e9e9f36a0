"""The agent's handshake decision, with no sockets: bytes in, a decision out."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pio_remote.agent.handshake import (
    INVITE_REFUSED,
    Accept,
    PendingHandshakes,
    Refuse,
    TrustView,
    decide,
)
from pio_remote.wire import e2e, session

AGENT_ID = "alice/lab-pi"
AGENT_KEY = e2e.generate_private_key()
CLIENT_KEY = e2e.generate_private_key()
INVITE_ID = e2e.new_invite_id()
SECRET = bytes(range(32))
HELLO = json.dumps({"version": session.VERSION}).encode()


def view(paired: bool = False, invite: bool = False, role: str = "client") -> TrustView:
    return TrustView(
        invite_secret=lambda i: SECRET if invite and i == INVITE_ID else None,
        role_of=lambda key: role if paired and key == e2e.public_key(CLIENT_KEY) else None,
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
    assert decision.role == "client"


def test_the_role_comes_from_the_agents_records_and_a_pairing_session_has_none():
    owner = decide(initiator().first_message(HELLO), AGENT_ID, AGENT_KEY, view(True, role="owner"))
    assert isinstance(owner, Accept) and owner.role == "owner"
    # A key already on the allow-list pairing again gets no role from its old entry.
    pairing = initiator(SECRET, INVITE_ID).first_message(HELLO)
    decision = decide(pairing, AGENT_ID, AGENT_KEY, view(True, True, role="owner"))
    assert isinstance(decision, Accept) and decision.role is None


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


# ---- channels waiting for a handshake -------------------------------------------------


def test_a_flooding_account_evicts_its_own_oldest_and_nobody_elses():
    book = PendingHandshakes(per_account=3, total=10)
    assert [book.open(t, "alice") for t in (0, 1)] == [[], []]
    evicted = [book.open(t, "mallory") for t in range(100, 200)]
    assert evicted[:3] == [[], [], []] and evicted[3] == [100] and evicted[-1] == [196]
    assert book.count("mallory") == 3 and book.count("alice") == 2
    assert book.open(2, "alice") == []  # alice's newcomer still gets in
    assert book.finish(0) and not book.finish(100)  # 100 was closed to make room
    assert book.finish(1) and book.finish(2) and book.count("alice") == 0


def test_at_the_total_cap_the_biggest_account_makes_room():
    book = PendingHandshakes(per_account=4, total=6)
    for t in range(4):
        book.open(t, "mallory")
    book.open(10, "bob")
    book.open(11, "bob")
    assert len(book) == 6
    assert book.open(20, "alice") == [0]  # mallory's oldest, not bob's
    assert book.open(21, "alice") == [1]
    assert book.open(22, "alice") == [2]  # a tie of two each: mallory still goes first
    assert len(book) == 6 and book.count("bob") == 2


@settings(max_examples=200, deadline=None)
@given(
    per_account=st.integers(1, 5),
    total=st.integers(1, 12),
    steps=st.lists(st.tuples(st.booleans(), st.sampled_from("abcd"), st.integers(0, 40))),
)
def test_the_caps_always_hold_and_every_ticket_is_finished_once(per_account, total, steps):
    book = PendingHandshakes(per_account, total)
    live: dict[int, str] = {}
    ticket = 0
    for opening, account, pick in steps:
        if opening:
            ticket += 1
            for old in book.open(ticket, account):
                assert live.pop(old) is not None  # only live tickets are evicted, once
            live[ticket] = account
        elif live:
            old = sorted(live)[pick % len(live)]
            assert book.finish(old)
            del live[old]
            assert not book.finish(old)
        assert len(book) == len(live) <= total
        for name in "abcd":
            assert book.count(name) == sum(a == name for a in live.values()) <= per_account
