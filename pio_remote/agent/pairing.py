"""Pairing, the agent's side: a client that holds a one-time invite joins the allow-list.

1. ``pio-remote agent invite`` stores an invite (id, secret, expiry) in invites.json
   and prints it with the agent's name and key (trust.create_invite).
2. The client finds the agent by the key in the invite, whatever name it runs
   under (client.Client.pair), and opens a Noise session keyed with the invite's
   secret as PSK: only the invite's holder can complete it (see handshake.py).
3. That session may make one call, ``pair.confirm``: it consumes the invite under
   the trust files' lock (so two clients racing for one invite cannot both win)
   and adds the client's key to the allow-list.
"""

from __future__ import annotations

from pathlib import Path

from pio_remote import trust
from pio_remote.agent.handlers import CallContext, CallFailed, handler
from pio_remote.agent.handshake import TrustView

PAIRING_ONLY = "this session is for pairing only"


def trust_view(home: Path, own_public: bytes) -> TrustView:
    """The trust files as the handshake reads them."""
    return TrustView(
        invite_secret=lambda invite_id: trust.invite_secret(home, invite_id),
        is_authorized=lambda key: trust.is_authorized(home, own_public, key),
    )


def confirm(home: Path, invite_id: bytes, client_key: bytes, label: str) -> bool:
    """Use the invite up and allow the client; False if someone else used it meanwhile."""
    if not trust.consume_invite(home, invite_id):
        return False
    trust.authorize_client(home, client_key, label)
    return True


@handler("pair.confirm")
async def pair_confirm(ctx: CallContext, label: str = "") -> dict[str, str]:
    """The client proved it holds the invite secret by getting this call through."""
    invite_id = ctx.channel.pairing_invite
    if invite_id is not None and not confirm(
        ctx.agent.home, invite_id, ctx.channel.client_key, label[:200] or "unnamed"
    ):
        raise CallFailed("invite_used", "this invite was used by someone else meanwhile")
    return {"agent": ctx.agent.agent_id}
