"""The agent's allow-list, the client's pinned agent keys, and one-time invites.

Two locks: the relay decides who may *reach* an agent; these files decide who
may *use* it. An agent trusts a client key only after pairing with an invite
(or when it is the agent's own key), and a client talks only to the key it pinned.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pio_remote.home import ConfigError, read_json, write_json
from pio_remote.wire import e2e

AUTHORIZED_CLIENTS_FILE = "authorized_clients.json"
KNOWN_AGENTS_FILE = "known_agents.json"
INVITES_FILE = "invites.json"
INVITE_PREFIX = "pior1"
# Long enough to walk from the lab to a desk, short enough that a leaked invite
# from last week pairs nobody.
DEFAULT_INVITE_TTL = 24 * 3600
# Every read-modify-write of the files above holds an exclusive flock on this file,
# so `agent invite`, `agent clients --revoke` and a running agent's pairing never
# interleave (two writers would bring back an invite the other just consumed).
LOCK_FILE = ".trust.lock"
_HEX_KEY = re.compile(r"^[0-9a-f]{64}$")
# A client's role on an agent, from the agent's own records only (never from the
# account name the relay puts in OPEN, which a relay could relabel):
# the agent's own key and keys paired with `agent invite --owner` are the owner;
# every other paired key, including entries written before roles existed, is a client.
OWNER = "owner"
CLIENT = "client"
ROLES = (OWNER, CLIENT)


class TrustError(Exception):
    pass


@contextmanager
def locked(home: Path) -> Iterator[None]:
    """Hold the trust files' lock (exclusive, across processes) for a read-modify-write."""
    fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _table(path: Path, value_ok: Any, what: str) -> dict[str, Any]:
    """A JSON object keyed by 64-digit hex keys, or a ConfigError naming the file and fix."""
    data = read_json(path, {})
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object: fix or remove it ({what})")
    for key, value in data.items():
        if not _HEX_KEY.match(key) or not value_ok(value):
            raise ConfigError(
                f"{path}: entry {key[:70]!r} is damaged (expected a 64-digit hex key and "
                f"{what}): fix or remove it"
            )
    return data


# ---- agent side -------------------------------------------------------------------


def authorized_clients(home: Path) -> dict[str, dict[str, object]]:
    return _table(
        home / AUTHORIZED_CLIENTS_FILE,
        lambda v: isinstance(v, dict),
        "{label, paired_at, role, account} per client; remove it to forget every paired client",
    )


def entry_role(entry: dict[str, object]) -> str:
    """The role an allow-list entry grants: only an exact "owner" is the owner."""
    return OWNER if entry.get("role") == OWNER else CLIENT


def role_of(home: Path, own_public: bytes, client_public: bytes) -> str | None:
    """OWNER, CLIENT, or None for a key the agent does not know."""
    if client_public == own_public:
        return OWNER
    entry = authorized_clients(home).get(client_public.hex())
    return None if entry is None else entry_role(entry)


def is_authorized(home: Path, own_public: bytes, client_public: bytes) -> bool:
    return role_of(home, own_public, client_public) is not None


def authorize_client(
    home: Path,
    client_public: bytes,
    label: str,
    *,
    role: str = CLIENT,
    account: str = "",
    client_label: str = "",
) -> None:
    """Add a key to the allow-list. ``account`` (the relay's word) is shown, never trusted."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    with locked(home):
        clients = authorized_clients(home)
        clients[client_public.hex()] = {
            "label": label,
            "paired_at": int(time.time()),
            "role": role,
            "account": account,
            "client_label": client_label or label,
        }
        write_json(home / AUTHORIZED_CLIENTS_FILE, clients)


def revoke_client(home: Path, fingerprint_or_hex: str) -> bool:
    with locked(home):
        clients = authorized_clients(home)
        for key in list(clients):
            if fingerprint_or_hex in (key, e2e.fingerprint(bytes.fromhex(key))):
                del clients[key]
                write_json(home / AUTHORIZED_CLIENTS_FILE, clients)
                return True
    return False


@dataclass(frozen=True)
class Invite:
    agent_name: str
    agent_key: bytes
    invite_id: bytes
    secret: bytes

    def encode(self) -> str:
        return ":".join(
            [
                INVITE_PREFIX,
                self.agent_name,
                self.agent_key.hex(),
                self.invite_id.hex(),
                self.secret.hex(),
            ]
        )

    @classmethod
    def decode(cls, text: str) -> Invite:
        parts = text.strip().split(":")
        if len(parts) != 5 or parts[0] != INVITE_PREFIX:
            raise TrustError(
                "not a pio-remote invite (expected 'pior1:NAME:KEY:ID:SECRET'): "
                "get one with 'pio-remote agent invite' on the agent"
            )
        try:
            key, iid, secret = (bytes.fromhex(p) for p in parts[2:])
        except ValueError:
            raise TrustError("invite is damaged: it has non-hex fields") from None
        if len(key) != e2e.KEY_SIZE or len(iid) != e2e.INVITE_ID_SIZE or len(secret) != 32:
            raise TrustError("invite is damaged: a field has the wrong length")
        return cls(parts[1], key, iid, secret)


@dataclass(frozen=True)
class InviteGrant:
    """What the agent promised whoever pairs with an invite (kept in invites.json only)."""

    role: str = CLIENT
    label: str = ""  # the owner's name for that client; "" lets the client name itself


def create_invite(
    home: Path,
    agent_name: str,
    agent_key: bytes,
    ttl: float,
    grant: InviteGrant = InviteGrant(),
) -> Invite:
    """A one-time invite; the role and label it grants stay on the agent, not in the text."""
    invite = Invite(agent_name, agent_key, e2e.new_invite_id(), os.urandom(32))
    with locked(home):
        invites = _live_invites(home)
        invites[invite.invite_id.hex()] = {
            "secret": invite.secret.hex(),
            "expires": time.time() + ttl,
            "role": grant.role,
            "label": grant.label,
        }
        write_json(home / INVITES_FILE, invites)
    return invite


def _invite_ok(value: object) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("secret"), str)
        and _HEX_KEY.match(value["secret"]) is not None
        and isinstance(value.get("expires"), int | float)
    )


def _live_invites(home: Path) -> dict[str, dict[str, object]]:
    now = time.time()
    path = home / INVITES_FILE
    data = read_json(path, {})
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object: remove it (open invites are lost)")
    # Invite ids are shorter than keys; a damaged entry is simply not a live invite.
    return {
        k: v
        for k, v in data.items()
        if isinstance(k, str) and _invite_ok(v) and float(v["expires"]) > now
    }


def invite_secret(home: Path, invite_id: bytes) -> bytes | None:
    """The PSK for a live invite, or None if unknown, used or expired."""
    entry = _live_invites(home).get(invite_id.hex())
    return bytes.fromhex(str(entry["secret"])) if entry else None


def take_invite(home: Path, invite_id: bytes) -> InviteGrant | None:
    """Use up an invite and return what it grants; None if already used or expired."""
    with locked(home):
        invites = _live_invites(home)
        entry = invites.pop(invite_id.hex(), None)
        write_json(home / INVITES_FILE, invites)
    if entry is None:
        return None
    label = entry.get("label")
    return InviteGrant(entry_role(entry), label if isinstance(label, str) else "")


def consume_invite(home: Path, invite_id: bytes) -> bool:
    """Use up an invite; False if it was already used or expired (someone else won)."""
    return take_invite(home, invite_id) is not None


# ---- client side ------------------------------------------------------------------


def _known_agents(home: Path) -> dict[str, str]:
    path = home / KNOWN_AGENTS_FILE
    data = read_json(path, {})
    fix = "fix or remove it (then pair again with 'pio-remote agent pair <invite>')"
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object {{agent: key}}: {fix}")
    for agent_id, value in data.items():
        if not isinstance(value, str) or not _HEX_KEY.match(value):
            raise ConfigError(
                f"{path}: the key pinned for agent {agent_id!r} is not 64 hex digits: {fix}"
            )
    return data


def pinned_key(home: Path, agent_id: str) -> bytes | None:
    value = _known_agents(home).get(agent_id)
    return bytes.fromhex(value) if value else None


def pinned_agents(home: Path) -> dict[str, bytes]:
    """Every pinned agent id and its key."""
    return {agent_id: bytes.fromhex(key) for agent_id, key in _known_agents(home).items()}


def pin_agent(home: Path, agent_id: str, key: bytes) -> None:
    with locked(home):
        known = _known_agents(home)
        known[agent_id] = key.hex()
        write_json(home / KNOWN_AGENTS_FILE, known)


def forget_agent(home: Path, agent_id: str) -> bool:
    with locked(home):
        known = _known_agents(home)
        if known.pop(agent_id, None) is None:
            return False
        write_json(home / KNOWN_AGENTS_FILE, known)
    return True
