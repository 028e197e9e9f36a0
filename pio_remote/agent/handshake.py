"""The agent's side of a session handshake, as one pure decision: no sockets, no trio.

    decision = decide(first_message, agent_id, private_key, trust_view)
    match decision:
        case Accept(reply=...):  send the reply, then serve the session
        case Refuse(reply=..., close_reason=...):  send the reply if any, then close

What the client's first message may be, and what the agent answers:

- not a handshake message, or one that fails authentication (wrong key, wrong
  invite secret, altered bytes): closed without a word (WireGuard's rule);
- a pairing handshake with the wrong secret for a live invite: accepted here,
  because IKpsk2 mixes the PSK in only at our reply, so the client cannot read
  that reply and nothing it sends afterwards decrypts;
- a pairing handshake naming an invite that is unknown, used or expired: closed
  with a reason the client shows (the client cannot authenticate us yet, so this
  says nothing a stranger could not guess);
- a session handshake from a key the agent does not know: an encrypted refusal
  that tells the client how to pair, then closed;
- otherwise: accepted, with the agent's id in the encrypted reply.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from pio_remote.wire import e2e, session

# The session protocol inside the Noise channel (session.VERSION): a client of
# another version is refused with one line naming both, instead of stalling.
PROTOCOL_VERSION = session.VERSION
INVITE_REFUSED = (
    "pairing refused: this invite is unknown, already used or expired; "
    "make a new one with 'pio-remote agent invite' on the agent"
)


@dataclass(frozen=True)
class TrustView:
    """What the decision reads from the trust files (callables, so tests need no files)."""

    invite_secret: Callable[[bytes], bytes | None]
    role_of: Callable[[bytes], str | None]  # trust.OWNER / trust.CLIENT, None: unknown key


@dataclass(frozen=True)
class Accept:
    reply: bytes
    transport: e2e.Transport
    client_key: bytes
    pairing_invite: bytes | None  # set: the session may only confirm this pairing
    role: str | None = None  # from the agent's records; None for a pairing session


@dataclass(frozen=True)
class Refuse:
    close_reason: str  # sent with CLOSE; "" says nothing
    reply: bytes | None = None  # an encrypted answer to send before closing
    log: str = ""  # for the agent's log; never sent


def decide(
    first_message: bytes, agent_id: str, private_key: bytes, trust: TrustView
) -> Accept | Refuse:
    """The whole handshake decision for one client's first message."""
    try:
        first = e2e.parse_first_message(first_message)
    except e2e.HandshakeError:
        return Refuse("", log="not a handshake message")
    psk = e2e.ZERO_PSK
    invite_id = first.invite_id if first.mode is e2e.Mode.PAIRING else None
    if invite_id is not None:
        secret = trust.invite_secret(invite_id)
        if secret is None:
            return Refuse(INVITE_REFUSED, log="pairing with an unknown, used or expired invite")
        psk = secret
    responder = e2e.Responder(private_key, e2e.prologue(agent_id), psk=psk)
    try:
        hello = responder.read_first(first.noise)
    except e2e.HandshakeError:
        return Refuse("", log="handshake failed authentication")
    client_key = responder.remote_static
    assert client_key is not None
    fingerprint = e2e.fingerprint(client_key)
    role = None if invite_id is not None else trust.role_of(client_key)
    if invite_id is None and role is None:
        refusal = {
            "ok": False,
            "code": "not_paired",
            "message": (
                f"agent '{agent_id}' does not know this client (key {fingerprint}): run "
                "'pio-remote agent pair <invite>' (get an invite with 'pio-remote agent "
                "invite' on the agent)"
            ),
        }
        reply, _ = responder.respond(json.dumps(refusal).encode())
        return Refuse("", reply, log=f"refused unpaired client {fingerprint}")
    version = client_version(hello)
    if version != PROTOCOL_VERSION:
        refusal = {
            "ok": False,
            "code": "version",
            "message": (
                f"agent '{agent_id}' speaks session protocol {PROTOCOL_VERSION} and this client "
                f"{version}: install the same pio-remote version on both"
            ),
        }
        reply, _ = responder.respond(json.dumps(refusal).encode())
        return Refuse("", reply, log=f"refused client {fingerprint}: session protocol {version}")
    welcome = {"ok": True, "agent": agent_id, "version": PROTOCOL_VERSION}
    reply, transport = responder.respond(json.dumps(welcome).encode())
    return Accept(reply, transport, client_key, invite_id, role)


class PendingHandshakes:
    """Channels the relay opened whose client has not sent its handshake yet.

    Any identity of an account the agent is shared with can OPEN channels, paired or
    not, and the agent learns who it is only from the handshake. So these channels are
    counted apart from sessions, per account and in total, and each cap makes room
    rather than refusing: a new channel closes the oldest pending one of its own
    account when that account is at its cap, else the oldest one of the account with
    the most when the total is reached. A flood from one account then costs only that
    account's slots, and a paired client's handshake (one relay round trip) still gets
    in. The shell closes each pending channel after a deadline too (handshake_timeout).

    Pure bookkeeping: keys are the shell's tickets (unique per channel, never reused),
    and ``open`` returns the tickets to close.
    """

    def __init__(self, per_account: int, total: int):
        if per_account < 1 or total < 1:
            raise ValueError("caps must be at least 1")
        self.per_account = per_account
        self.total = total
        self._by_account: dict[str, dict[int, None]] = {}  # insertion order: oldest first
        self._account_of: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._account_of)

    def count(self, account: str) -> int:
        return len(self._by_account.get(account, ()))

    def open(self, ticket: int, account: str) -> list[int]:
        """Count a new pending channel; returns the pending ones to close for it."""
        if ticket in self._account_of:
            raise ValueError(f"ticket {ticket} is already pending")
        evict: list[int] = []
        if self.count(account) >= self.per_account:
            evict.append(next(iter(self._by_account[account])))
        elif len(self) >= self.total:
            biggest = max(self._by_account, key=lambda a: len(self._by_account[a]))
            evict.append(next(iter(self._by_account[biggest])))
        for old in evict:
            self.finish(old)
        self._by_account.setdefault(account, {})[ticket] = None
        self._account_of[ticket] = account
        return evict

    def finish(self, ticket: int) -> bool:
        """The channel handshook, timed out or closed; False if it was no longer pending."""
        account = self._account_of.pop(ticket, None)
        if account is None:
            return False
        mine = self._by_account[account]
        del mine[ticket]
        if not mine:
            del self._by_account[account]
        return True


def client_version(hello: bytes) -> int:
    """The session protocol the client's first payload names (1 when it names none)."""
    try:
        version = json.loads(hello or b"{}").get("version", 1)
    except (ValueError, AttributeError):
        return 1
    return version if isinstance(version, int) and not isinstance(version, bool) else 1
