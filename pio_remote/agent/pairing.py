"""Pairing, the agent's side: a client that holds a one-time invite joins the allow-list.

1. ``pio-remote agent invite`` stores an invite (id, secret, expiry) in invites.json
   and prints it with the agent's name and key (trust.create_invite).
2. The client finds the agent by the key in the invite, whatever name it runs
   under (client.Client.pair), and opens a Noise session keyed with the invite's
   secret as PSK: only the invite's holder can complete it (see handshake.py).
3. That session may make one call, ``pair.confirm``: it consumes the invite under
   the trust files' lock (so two clients racing for one invite cannot both win)
   and adds the client's key to the allow-list, with the role the invite grants
   (``agent invite --owner``: owner; otherwise client) and the invite's label.
   The role comes only from invites.json on the agent: nothing the client or the
   relay sends can change it. The relay account the session came from is stored
   for ``agent clients`` to show, as information only.
"""

from __future__ import annotations

from pathlib import Path

from pio_remote.agent import allowlist as trust
from pio_remote.agent.handlers import CallContext, CallFailed, handler
from pio_remote.agent.handshake import TrustView

PAIRING_ONLY = "this session is for pairing only"


def trust_view(home: Path, own_public: bytes) -> TrustView:
    """The trust files as the handshake reads them."""
    return TrustView(
        invite_secret=lambda invite_id: trust.invite_secret(home, invite_id),
        role_of=lambda key: trust.role_of(home, own_public, key),
    )


def confirm(
    home: Path, invite_id: bytes, client_key: bytes, label: str, account: str = ""
) -> trust.InviteGrant | None:
    """Use the invite up and allow the client; None if someone else used it meanwhile."""
    grant = trust.take_invite(home, invite_id)
    if grant is None:
        return None
    trust.authorize_client(
        home,
        client_key,
        grant.label or label,
        role=grant.role,
        account=account,
        client_label=label,
    )
    return grant


@handler("pair.confirm")
async def pair_confirm(ctx: CallContext, label: str = "") -> dict[str, str]:
    """The client proved it holds the invite secret by getting this call through."""
    invite_id = ctx.channel.pairing_invite
    if invite_id is None:  # an already paired session: nothing to confirm
        return {"agent": ctx.agent.agent_id, "role": ctx.channel.role or trust.CLIENT}
    grant = confirm(
        ctx.agent.home,
        invite_id,
        ctx.channel.client_key,
        label[:200] or "unnamed",
        ctx.channel.client_account[:200],
    )
    if grant is None:
        raise CallFailed("invite_used", "this invite was used by someone else meanwhile")
    return {"agent": ctx.agent.agent_id, "role": grant.role}
