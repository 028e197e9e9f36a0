"""The agent's allow-list, the client's pinned agent keys, and one-time invites.

Two locks: the relay decides who may *reach* an agent; these files decide who
may *use* it. An agent trusts a client key only after pairing with an invite
(or when it is the agent's own key), and a client talks only to the key it pinned.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from pio_remote import e2e
from pio_remote.home import read_json, write_json

AUTHORIZED_CLIENTS_FILE = "authorized_clients.json"
KNOWN_AGENTS_FILE = "known_agents.json"
INVITES_FILE = "invites.json"
INVITE_PREFIX = "pior1"
# Long enough to walk from the lab to a desk, short enough that a leaked invite
# from last week pairs nobody.
DEFAULT_INVITE_TTL = 24 * 3600


class TrustError(Exception):
    pass


# ---- agent side -------------------------------------------------------------------


def authorized_clients(home: Path) -> dict[str, dict[str, object]]:
    return read_json(home / AUTHORIZED_CLIENTS_FILE, {})


def is_authorized(home: Path, own_public: bytes, client_public: bytes) -> bool:
    return client_public == own_public or client_public.hex() in authorized_clients(home)


def authorize_client(home: Path, client_public: bytes, label: str) -> None:
    clients = authorized_clients(home)
    clients[client_public.hex()] = {"label": label, "paired_at": int(time.time())}
    write_json(home / AUTHORIZED_CLIENTS_FILE, clients)


def revoke_client(home: Path, fingerprint_or_hex: str) -> bool:
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


def create_invite(home: Path, agent_name: str, agent_key: bytes, ttl: float) -> Invite:
    invite = Invite(agent_name, agent_key, e2e.new_invite_id(), os.urandom(32))
    invites = _live_invites(home)
    invites[invite.invite_id.hex()] = {"secret": invite.secret.hex(), "expires": time.time() + ttl}
    write_json(home / INVITES_FILE, invites)
    return invite


def _live_invites(home: Path) -> dict[str, dict[str, object]]:
    now = time.time()
    invites = read_json(home / INVITES_FILE, {})
    return {k: v for k, v in invites.items() if float(v.get("expires", 0)) > now}


def invite_secret(home: Path, invite_id: bytes) -> bytes | None:
    """The PSK for a live invite, or None if unknown, used or expired."""
    entry = _live_invites(home).get(invite_id.hex())
    return bytes.fromhex(str(entry["secret"])) if entry else None


def consume_invite(home: Path, invite_id: bytes) -> None:
    invites = _live_invites(home)
    invites.pop(invite_id.hex(), None)
    write_json(home / INVITES_FILE, invites)


# ---- client side ------------------------------------------------------------------


def pinned_key(home: Path, agent_id: str) -> bytes | None:
    value = read_json(home / KNOWN_AGENTS_FILE, {}).get(agent_id)
    return bytes.fromhex(value) if value else None


def pin_agent(home: Path, agent_id: str, key: bytes) -> None:
    known = read_json(home / KNOWN_AGENTS_FILE, {})
    known[agent_id] = key.hex()
    write_json(home / KNOWN_AGENTS_FILE, known)


def forget_agent(home: Path, agent_id: str) -> bool:
    known = read_json(home / KNOWN_AGENTS_FILE, {})
    if known.pop(agent_id, None) is None:
        return False
    write_json(home / KNOWN_AGENTS_FILE, known)
    return True
