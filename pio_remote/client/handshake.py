"""The client's side of opening a session: guessing the agent, and message 1 sent early.

When the agent's key is pinned, the client builds Noise message 1 before the
relay has said which agent a ref resolves to, and sends it right behind OPEN
(or, from ``Client.connect(agents=...)``, behind HELLO in the upgrade
request). A wrong guess costs one more OPEN, never a weaker check: the key the
relay names is still checked against the pinned one.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from pio_remote import home
from pio_remote.client import pins
from pio_remote.net import link
from pio_remote.net.link import Link
from pio_remote.wire import e2e, session
from pio_remote.wire.envelope import Frame
from pio_remote.wire.invite import Invite


def queue_into(send: trio.MemorySendChannel[Frame]) -> Callable[[Frame], None]:
    """A channel handler for the handshake: frames wait in ``send``'s queue."""

    def early(frame: Frame) -> None:
        try:
            send.send_nowait(frame)
        except trio.WouldBlock:
            pass  # the agent talks once during the handshake; extra frames are noise

    return early


def open_early(
    lnk: Link, agent_ref: str, first: bytes
) -> tuple[link.PendingOpen, trio.MemoryReceiveChannel[Frame]]:
    """Prepare a channel (OPEN, then ``first``) whose frames queue up for the handshake."""
    send, receive = trio.open_memory_channel[Frame](4)
    return lnk.prepare_open(agent_ref, queue_into(send), first), receive


def pinned_guess(
    home_path: Path, agent_ref: str, account: str | None, own_key: bytes
) -> tuple[str, bytes] | None:
    """The agent id and key ``agent_ref`` most likely resolves to, if we can check that key.

    "name" means our own account's agent first (the relay's rule); before we
    know our account, the one pinned agent of that name. An agent nobody
    pinned can only be one running with this machine's own key (any other is
    refused as unpaired), so that key is the guess then. A wrong guess costs
    one extra OPEN.
    """
    try:
        pinned = pins.pinned_agents(home_path)
    except (OSError, ValueError, home.ConfigError):
        return None
    if "/" in agent_ref or account is not None:
        agent_id = agent_ref if "/" in agent_ref else f"{account}/{agent_ref}"
        return (agent_id, pinned.get(agent_id, own_key))
    named = [a for a in pinned if a.partition("/")[2] == agent_ref]
    return (named[0], pinned[named[0]]) if len(named) == 1 else None


def make_initiator(
    identity: home.Identity, agent_id: str, expected: bytes, invite: Invite | None
) -> tuple[e2e.Initiator, bytes]:
    """The handshake's initiator and its first message (no call rides in it)."""
    initiator = e2e.Initiator(
        identity.private,
        expected,
        e2e.prologue(agent_id),
        psk=invite.secret if invite else e2e.ZERO_PSK,
        invite_id=invite.invite_id if invite else None,
    )
    # Only the version and a host name: the relay can replay message 1, so
    # nothing in it may ask the agent to change anything.
    hello = json.dumps({"version": session.VERSION, "client": socket.gethostname()})
    return initiator, initiator.first_message(hello.encode())


@dataclass
class EarlyOpen:
    """A channel whose message 1 went out with OPEN (``pending``: with HELLO, too)."""

    pending: link.PendingOpen | None
    receive: trio.MemoryReceiveChannel[Frame]
    guess: tuple[str, bytes]
    initiator: e2e.Initiator
