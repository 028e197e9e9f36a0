"""The invite text an agent prints and a client pastes: ``pior1:NAME:KEY:ID:SECRET``.

Both roles read it (the agent makes it, the client pairs with it), so its format lives
here and not with either. What an invite grants stays on the agent (agent/allowlist.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from pio_remote.wire import e2e

INVITE_PREFIX = "pior1"
SECRET_SIZE = 32


class InviteError(Exception):
    """Text that is not an invite; the message says where to get a good one."""


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
            raise InviteError(
                "not a pio-remote invite (expected 'pior1:NAME:KEY:ID:SECRET'): "
                "get one with 'pio-remote agent invite' on the agent"
            )
        try:
            key, iid, secret = (bytes.fromhex(p) for p in parts[2:])
        except ValueError:
            raise InviteError("invite is damaged: it has non-hex fields") from None
        if len(key) != e2e.KEY_SIZE or len(iid) != e2e.INVITE_ID_SIZE or len(secret) != SECRET_SIZE:
            raise InviteError("invite is damaged: a field has the wrong length")
        return cls(parts[1], key, iid, secret)
