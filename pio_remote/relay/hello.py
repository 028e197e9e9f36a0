"""HELLO validation: what a peer must say first, checked without any I/O."""

from __future__ import annotations

from typing import NamedTuple

from pio_remote.relay.accounts import NAME_RE
from pio_remote.relay.router import AGENT, ProtocolError
from pio_remote.wire import envelope

# Accounts one agent may share with; HELLO must stay a small frame.
MAX_SHARES = 256

KEY_HEX_LEN = 64  # X25519 public key, hex
_HEX = frozenset("0123456789abcdef")


class AgentHello(NamedTuple):
    name: str
    shares: frozenset[str]
    key: str  # lower-case hex


class VersionError(ProtocolError):
    """HELLO named a protocol version this relay does not speak."""


def _brief(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_hello(hello: object, role: str) -> AgentHello | None:
    """Validate a HELLO payload for ``role`` (None for clients: nothing to keep).

    Raises ProtocolError (VersionError for a version mismatch) saying what is wrong.
    """
    if not isinstance(hello, dict):
        raise ProtocolError("HELLO payload must be a JSON object")
    version = hello.get("version")
    if type(version) is not int:
        raise ProtocolError("HELLO needs an integer 'version'")
    if version != envelope.PROTOCOL_VERSION:
        raise VersionError(
            f"this relay speaks protocol version {envelope.PROTOCOL_VERSION}, the peer sent "
            f"version {_brief(version)}: update the older side"
        )
    if hello.get("role") != role:
        raise ProtocolError(
            f"HELLO role {_brief(hello.get('role'))} does not match the path /v1/{role}"
        )
    if role != AGENT:
        return None
    name = hello.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ProtocolError(
            f"HELLO name {_brief(name)} is invalid: use 1-64 characters from A-Z a-z 0-9 . _ -"
        )
    shares = hello.get("shares", [])
    if not isinstance(shares, list) or len(shares) > MAX_SHARES:
        raise ProtocolError(f"HELLO 'shares' must be a list of at most {MAX_SHARES} accounts")
    for account in shares:
        if not isinstance(account, str) or not NAME_RE.fullmatch(account):
            raise ProtocolError(f"HELLO 'shares' entry {_brief(account)} is not an account name")
    key = hello.get("key")
    if not isinstance(key, str) or len(key) != KEY_HEX_LEN or not _HEX.issuperset(key.lower()):
        raise ProtocolError(f"HELLO 'key' must be {KEY_HEX_LEN} hex characters (X25519 public key)")
    return AgentHello(name, frozenset(shares), key.lower())
