"""End-to-end encryption between a client and an agent: one Noise pattern, no options.

Like WireGuard, there is exactly one protocol, ``Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s``.
The client (initiator) already knows the agent's static key: it pinned it when it
paired, which is what IK assumes. The PSK is all zeros for ordinary sessions and
the invite's one-time secret while pairing, so a relay that saw neither the
invite nor the agent's private key cannot pair itself in.

The first handshake message has a short cleartext prefix that tells the agent
which PSK to use before it reads the Noise message:

    mode (1 byte: 0 session, 1 pairing) | invite id (16 bytes, pairing only) | Noise msg 1

The prologue binds the protocol version and the agent id as the client sees it
(``owner/name``), so a relay that routes a session to another agent, or
replays it under another name, breaks the handshake.

noiseprotocol 0.3.1 pitfalls handled here: ``encrypt`` accepts 65535 plaintext
bytes but the peer's ``decrypt`` rejects more than 65535 ciphertext bytes, so
plaintext is capped at 65519; only ``bytes`` is accepted; and the remote static
key is read from the handshake state, which the library drops once the handshake
is done.
"""

from __future__ import annotations

import enum
import hashlib
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import (
    NoiseHandshakeError,
    NoiseInvalidMessage,
    NoiseMaxNonceError,
    NoiseValueError,
)

PROTOCOL_NAME = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
PROLOGUE_PREFIX = b"pio-remote e2e v1\n"
MAX_MESSAGE = 65535  # Noise spec, section 3
TAG_SIZE = 16
MAX_PLAINTEXT = MAX_MESSAGE - TAG_SIZE  # 65519
KEY_SIZE = 32
INVITE_ID_SIZE = 16
ZERO_PSK = bytes(KEY_SIZE)

# What noiseprotocol raises on bad input; a failed tag inside a handshake
# message surfaces as cryptography's InvalidTag, not as a Noise error.
NOISE_ERRORS = (
    InvalidTag,
    NoiseHandshakeError,
    NoiseInvalidMessage,
    NoiseMaxNonceError,
    NoiseValueError,
    ValueError,
)


class Mode(enum.IntEnum):
    SESSION = 0
    PAIRING = 1


class HandshakeError(Exception):
    """The handshake failed: wrong key, wrong PSK, tampering or garbage."""


class DecryptError(Exception):
    """A transport message failed authentication: it was altered or forged."""


def generate_private_key() -> bytes:
    return X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def public_key(private: bytes) -> bytes:
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def fingerprint(public: bytes) -> str:
    """A short, readable digest of a public key, as shown in errors and listings."""
    digest = hashlib.sha256(public).hexdigest()[:32]
    return ":".join(digest[i : i + 4] for i in range(0, 32, 4))


def prologue(agent_id: str) -> bytes:
    return PROLOGUE_PREFIX + agent_id.encode("utf-8")


def new_invite_id() -> bytes:
    return os.urandom(INVITE_ID_SIZE)


@dataclass(frozen=True, slots=True)
class FirstMessage:
    mode: Mode
    invite_id: bytes | None
    noise: bytes


def parse_first_message(data: bytes) -> FirstMessage:
    if not data:
        raise HandshakeError("empty handshake message")
    try:
        mode = Mode(data[0])
    except ValueError:
        raise HandshakeError(f"unknown handshake mode {data[0]}") from None
    if mode is Mode.PAIRING:
        if len(data) < 1 + INVITE_ID_SIZE:
            raise HandshakeError("pairing handshake too short")
        return FirstMessage(mode, data[1 : 1 + INVITE_ID_SIZE], data[1 + INVITE_ID_SIZE :])
    return FirstMessage(mode, None, data[1:])


class Transport:
    """The two cipher states after the handshake; one Noise message per call."""

    def __init__(self, conn: NoiseConnection, remote_static: bytes, handshake_hash: bytes):
        self._conn = conn
        self.remote_static = remote_static
        self.handshake_hash = handshake_hash

    def encrypt(self, plaintext: bytes) -> bytes:
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValueError(f"plaintext of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT}")
        return self._conn.encrypt(bytes(plaintext))

    def decrypt(self, ciphertext: bytes) -> bytes:
        try:
            return self._conn.decrypt(bytes(ciphertext))
        except NOISE_ERRORS as exc:
            raise DecryptError(str(exc)) from None


def _connection(
    private: bytes, prologue_bytes: bytes, psk: bytes, ephemeral: bytes | None
) -> NoiseConnection:
    conn = NoiseConnection.from_name(PROTOCOL_NAME)
    conn.set_prologue(prologue_bytes)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, private)
    if ephemeral is not None:  # fixed ephemerals exist only to replay published test vectors
        conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    conn.set_psks(psk=psk)
    return conn


class Initiator:
    """The client side: knows the agent's key before it starts."""

    def __init__(
        self,
        private: bytes,
        agent_public: bytes,
        prologue_bytes: bytes,
        *,
        psk: bytes = ZERO_PSK,
        invite_id: bytes | None = None,
        ephemeral: bytes | None = None,
    ):
        self._conn = _connection(private, prologue_bytes, psk, ephemeral)
        self._conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, agent_public)
        self._conn.set_as_initiator()
        self._conn.start_handshake()
        self._agent_public = agent_public
        self._invite_id = invite_id

    def first_message(self, payload: bytes = b"") -> bytes:
        if self._invite_id is not None:
            prefix = bytes([Mode.PAIRING]) + self._invite_id
        else:
            prefix = bytes([Mode.SESSION])
        return prefix + bytes(self._conn.write_message(bytes(payload)))

    def read_response(self, message: bytes) -> tuple[bytes, Transport]:
        try:
            payload = bytes(self._conn.read_message(bytes(message)))
        except NOISE_ERRORS as exc:
            raise HandshakeError(f"agent's handshake reply failed: {exc}") from None
        transport = Transport(self._conn, self._agent_public, self._conn.get_handshake_hash())
        return payload, transport


class Responder:
    """The agent side: learns the client's static key from message one."""

    def __init__(
        self,
        private: bytes,
        prologue_bytes: bytes,
        *,
        psk: bytes = ZERO_PSK,
        ephemeral: bytes | None = None,
    ):
        self._conn = _connection(private, prologue_bytes, psk, ephemeral)
        self._conn.set_as_responder()
        self._conn.start_handshake()
        self.remote_static: bytes | None = None

    def read_first(self, noise_message: bytes) -> bytes:
        # Keep the handshake state: noiseprotocol drops it after the last message.
        state = self._conn.noise_protocol.handshake_state
        try:
            payload = bytes(self._conn.read_message(bytes(noise_message)))
        except NOISE_ERRORS as exc:
            raise HandshakeError(f"client's handshake failed: {exc}") from None
        self.remote_static = bytes(state.rs.public_bytes)
        return payload

    def respond(self, payload: bytes = b"") -> tuple[bytes, Transport]:
        assert self.remote_static is not None, "read_first() comes first"
        message = bytes(self._conn.write_message(bytes(payload)))
        return message, Transport(self._conn, self.remote_static, self._conn.get_handshake_hash())
