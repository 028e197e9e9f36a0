"""The Noise wrapper against public test vectors, and its refusals."""

import json
from pathlib import Path

import pytest

from pio_remote.wire import e2e

VECTORS = json.loads((Path(__file__).parent.parent / "data" / "noise-vectors.json").read_text())


@pytest.mark.filterwarnings("ignore:One of ephemeral keypairs is already set")
@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["protocol_name"])
def test_wrapper_reproduces_public_vector(vector):
    assert vector["protocol_name"].encode() == e2e.PROTOCOL_NAME
    h = bytes.fromhex
    initiator = e2e.Initiator(
        h(vector["init_static"]),
        h(vector["init_remote_static"]),
        h(vector["init_prologue"]),
        psk=h(vector["init_psks"][0]),
        ephemeral=h(vector["init_ephemeral"]),
    )
    responder = e2e.Responder(
        h(vector["resp_static"]),
        h(vector["resp_prologue"]),
        psk=h(vector["resp_psks"][0]),
        ephemeral=h(vector["resp_ephemeral"]),
    )
    msgs = vector["messages"]
    first = initiator.first_message(h(msgs[0]["payload"]))
    assert first[0] == e2e.Mode.SESSION and first[1:] == h(msgs[0]["ciphertext"])
    parsed = e2e.parse_first_message(first)
    assert responder.read_first(parsed.noise) == h(msgs[0]["payload"])
    assert responder.remote_static == e2e.public_key(h(vector["init_static"]))
    reply, resp_transport = responder.respond(h(msgs[1]["payload"]))
    assert reply == h(msgs[1]["ciphertext"])
    payload, init_transport = initiator.read_response(reply)
    assert payload == h(msgs[1]["payload"])
    assert init_transport.handshake_hash == h(vector["handshake_hash"])
    assert resp_transport.handshake_hash == h(vector["handshake_hash"])
    for i, msg in enumerate(msgs[2:]):
        sender, receiver = (
            (init_transport, resp_transport) if i % 2 == 0 else (resp_transport, init_transport)
        )
        ciphertext = sender.encrypt(h(msg["payload"]))
        assert ciphertext == h(msg["ciphertext"])
        assert receiver.decrypt(ciphertext) == h(msg["payload"])


def _pair(psk_i=e2e.ZERO_PSK, psk_r=e2e.ZERO_PSK, agent_id="alice/lab", resp_id="alice/lab"):
    agent, client = e2e.generate_private_key(), e2e.generate_private_key()
    init = e2e.Initiator(client, e2e.public_key(agent), e2e.prologue(agent_id), psk=psk_i)
    resp = e2e.Responder(agent, e2e.prologue(resp_id), psk=psk_r)
    return init, resp


def test_max_plaintext_round_trips_and_larger_is_refused():
    init, resp = _pair()
    resp.read_first(e2e.parse_first_message(init.first_message()).noise)
    msg, t_resp = resp.respond()
    _, t_init = init.read_response(msg)
    big = bytes(range(256)) * 255 + bytes(range(e2e.MAX_PLAINTEXT - 255 * 256))
    assert len(big) == e2e.MAX_PLAINTEXT
    assert t_resp.decrypt(t_init.encrypt(big)) == big
    with pytest.raises(ValueError, match="exceeds"):
        t_init.encrypt(big + b"x")
    # bytearray input is accepted (the library alone only takes bytes)
    assert t_resp.decrypt(t_init.encrypt(bytearray(b"abc"))) == b"abc"


def test_flipped_bit_fails_authentication():
    init, resp = _pair()
    resp.read_first(e2e.parse_first_message(init.first_message()).noise)
    msg, t_resp = resp.respond()
    _, t_init = init.read_response(msg)
    ct = bytearray(t_init.encrypt(b"firmware chunk"))
    ct[3] ^= 0x01
    with pytest.raises(e2e.DecryptError):
        t_resp.decrypt(bytes(ct))


def test_prologue_binds_agent_identity():
    init, resp = _pair(agent_id="alice/lab", resp_id="mallory/lab")
    # The prologue is hashed before message 1's encrypted static key, so the
    # agent already rejects the very first message.
    with pytest.raises(e2e.HandshakeError):
        resp.read_first(e2e.parse_first_message(init.first_message()).noise)


def test_wrong_psk_breaks_pairing():
    init, resp = _pair(psk_i=b"\x01" * 32, psk_r=b"\x02" * 32)
    resp.read_first(e2e.parse_first_message(init.first_message()).noise)
    msg, _ = resp.respond()
    with pytest.raises(e2e.HandshakeError):
        init.read_response(msg)


def test_first_message_to_wrong_agent_key_fails():
    client, agent, other = (e2e.generate_private_key() for _ in range(3))
    init = e2e.Initiator(client, e2e.public_key(agent), e2e.prologue("a/b"))
    resp = e2e.Responder(other, e2e.prologue("a/b"))
    with pytest.raises(e2e.HandshakeError):
        resp.read_first(e2e.parse_first_message(init.first_message()).noise)


def test_pairing_prefix_round_trips():
    invite_id = e2e.new_invite_id()
    init = e2e.Initiator(
        e2e.generate_private_key(),
        e2e.public_key(e2e.generate_private_key()),
        e2e.prologue("a/b"),
        psk=b"\x07" * 32,
        invite_id=invite_id,
    )
    parsed = e2e.parse_first_message(init.first_message())
    assert parsed.mode is e2e.Mode.PAIRING and parsed.invite_id == invite_id
    with pytest.raises(e2e.HandshakeError):
        e2e.parse_first_message(b"\x09rest")
    with pytest.raises(e2e.HandshakeError):
        e2e.parse_first_message(b"\x01short")
