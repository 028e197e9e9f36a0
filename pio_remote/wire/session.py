"""The session protocol that runs inside the Noise channel, as a sans-IO state machine.

Like h11, ``Session`` never touches a socket: the caller feeds it decrypted
messages with ``receive(message)`` and gets events back; every ``send_*``
method returns the plaintext message to encrypt and send. One session message
is one Noise transport message:

    +--------+----------------+----------------------------------+
    | kind   | call id (u32)  | body                             |
    | 1 byte | 4 bytes        | 0..MAX_BODY bytes                |
    +--------+----------------+----------------------------------+

A *call* is a request from the client to the agent with an optional byte
stream in each direction, ended by exactly one RESULT from the agent:

    CALL    client -> agent   JSON {"method": str, "params": {...}}
    DATA    both ways         stream bytes, counted against the receiver's credit
    EVENT   both ways         JSON control message (baud change, port gone, progress),
                              counted against credit like DATA
    CREDIT  both ways         u32 BE: the sender may send that many more bytes
    EOF     both ways         the sender sends no more DATA/EVENT on this call
    RESULT  agent -> client   JSON {"ok": true, "value": ...} or
                              {"ok": false, "error": {"code": str, "message": str}}; ends the call
    CANCEL  client -> agent   stop the call; the agent still ends it with RESULT
    PING    both ways         call id is a nonce; answered by PONG with the same id
    PONG    both ways
    GOAWAY  agent -> client   JSON {"code", "message"}: the agent refuses or ends the session

Flow control: the agent-to-client direction of each call starts with
``INITIAL_WINDOW`` bytes of credit; the client-to-agent direction starts with
none, and the agent grants it (``grant``) from its memory budget once the call
reads its input (agent/budget.py), so a call that never reads holds no memory
and a session's calls together never hold more than the session's budget. The
receiver grants more as its application consumes data, so a slow reader slows
its own sender and nobody else. Sending beyond the credit is a
``LocalProtocolError``; a peer that does it has broken the protocol and the
session ends with ``RemoteProtocolError``.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass, field
from typing import Any

# Named in the handshake by both ends (agent/handshake.py, client.py). 2: a call's
# input starts with no credit and waits for the agent's grant; 1 and 2 cannot talk.
VERSION = 2

HEADER = struct.Struct(">BI")
# One Noise transport message carries at most 65,535 bytes, 16 of them the AEAD tag
# (e2e.MAX_PLAINTEXT, 65,519; a unit test keeps the two in step). Stated here, not
# imported, so that the sans-IO core does not pull in Noise and cryptography.
NOISE_MAX_PLAINTEXT = 65535 - 16
MAX_BODY = NOISE_MAX_PLAINTEXT - HEADER.size  # 65514: one Noise message per session message

# Enough in flight to keep a loopback or LAN path busy (1 MiB at ~150 MB/s is ~7 ms
# of data), small enough that 64 calls cannot pin more than 64 MiB on an agent.
INITIAL_WINDOW = 1024 * 1024
# Grant credit back after this much was consumed. Half a window (what HTTP/2
# stacks often use) leaves half the window idle for a round trip after each grant:
# at 150 ms and 50 Mbit/s an upload ran at 30 Mbit/s. 64 KiB costs one small
# CREDIT per full DATA message or so, and keeps the window busy.
CREDIT_THRESHOLD = 64 * 1024
CREDIT_STEP = CREDIT_THRESHOLD
# The most credit a peer may have outstanding on one call (a receiver grows a
# call's window up to this; _on_credit refuses more).
MAX_WINDOW = 4 * INITIAL_WINDOW
# Calls open at once in one session; a client that needs more is misbehaving.
MAX_OPEN_CALLS = 64
# JSON bodies (CALL, EVENT, RESULT, GOAWAY) stay well under one message.
MAX_JSON_BODY = 32 * 1024


class Kind(enum.IntEnum):
    CALL = 0x01
    DATA = 0x02
    EVENT = 0x03
    CREDIT = 0x04
    EOF = 0x05
    RESULT = 0x06
    CANCEL = 0x07
    PING = 0x08
    PONG = 0x09
    GOAWAY = 0x0A


class Role(enum.Enum):
    CLIENT = "client"
    AGENT = "agent"


class ProtocolError(Exception):
    pass


class LocalProtocolError(ProtocolError):
    """We tried to break the protocol: a bug on this side."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol: the session must end."""


# ---- events -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallStarted:
    call_id: int
    method: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Data:
    call_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Event:
    call_id: int
    body: dict[str, Any]
    size: int = 0  # bytes of credit it took, given back when the application reads it


@dataclass(frozen=True, slots=True)
class CreditGranted:
    call_id: int
    amount: int


@dataclass(frozen=True, slots=True)
class EndOfStream:
    call_id: int


@dataclass(frozen=True, slots=True)
class CallResult:
    call_id: int
    ok: bool
    value: Any = None
    error_code: str = ""
    error_message: str = ""


@dataclass(frozen=True, slots=True)
class CancelRequested:
    call_id: int


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int


@dataclass(frozen=True, slots=True)
class GoAway:
    code: str
    message: str


SessionEvent = (
    CallStarted
    | Data
    | Event
    | CreditGranted
    | EndOfStream
    | CallResult
    | CancelRequested
    | Ping
    | Pong
    | GoAway
)


@dataclass(slots=True)
class _CallState:
    send_credit: int = INITIAL_WINDOW  # bytes we may still send
    recv_allowed: int = INITIAL_WINDOW  # bytes the peer may still send
    recv_consumed: int = 0  # consumed by our app since the last grant
    local_eof: bool = False
    remote_eof: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _pack(kind: Kind, call_id: int, body: bytes = b"") -> bytes:
    if len(body) > MAX_BODY:
        raise LocalProtocolError(f"{kind.name} body of {len(body)} bytes exceeds {MAX_BODY}")
    return HEADER.pack(kind, call_id) + body


def _json_body(obj: Any) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    if len(body) > MAX_JSON_BODY:
        raise LocalProtocolError(f"JSON body of {len(body)} bytes exceeds {MAX_JSON_BODY}")
    return body


def _parse_json(kind: Kind, body: bytes) -> Any:
    if len(body) > MAX_JSON_BODY:
        raise RemoteProtocolError(f"{kind.name} body of {len(body)} bytes exceeds {MAX_JSON_BODY}")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RemoteProtocolError(f"{kind.name} body is not JSON") from None


class Session:
    """Session state for one end: open calls, credits and end-of-stream flags."""

    def __init__(self, role: Role):
        self.role = role
        self._calls: dict[int, _CallState] = {}
        # Call ids only grow, so an id below this that is not open has ended:
        # a message about it crossed our RESULT or CANCEL and is dropped.
        self._next_call_id = 1
        self.closed = False

    # ---- queries ----------------------------------------------------------------

    def is_open(self, call_id: int) -> bool:
        return call_id in self._calls

    def send_credit(self, call_id: int) -> int:
        return self._state(call_id).send_credit

    @property
    def open_calls(self) -> int:
        return len(self._calls)

    def _state(self, call_id: int) -> _CallState:
        try:
            return self._calls[call_id]
        except KeyError:
            raise LocalProtocolError(f"call {call_id} is not open") from None

    # ---- sending ----------------------------------------------------------------

    def start_call(self, method: str, params: dict[str, Any] | None = None) -> tuple[int, bytes]:
        if self.role is not Role.CLIENT:
            raise LocalProtocolError("only the client starts calls")
        if len(self._calls) >= MAX_OPEN_CALLS:
            raise LocalProtocolError(f"more than {MAX_OPEN_CALLS} calls open at once")
        call_id = self._next_call_id
        self._next_call_id += 1
        message = _pack(Kind.CALL, call_id, _json_body({"method": method, "params": params or {}}))
        # The agent grants credit for a call's input when the call reads it.
        self._calls[call_id] = _CallState(send_credit=0)
        return call_id, message

    def send_data(self, call_id: int, data: bytes) -> bytes:
        state = self._state(call_id)
        if state.local_eof:
            raise LocalProtocolError(f"call {call_id}: DATA after EOF")
        if len(data) > state.send_credit:
            raise LocalProtocolError(
                f"call {call_id}: {len(data)} bytes exceed the {state.send_credit} bytes of credit"
            )
        state.send_credit -= len(data)
        return _pack(Kind.DATA, call_id, bytes(data))

    def send_event(self, call_id: int, body: dict[str, Any]) -> bytes:
        state = self._state(call_id)
        if state.local_eof:
            raise LocalProtocolError(f"call {call_id}: EVENT after EOF")
        raw = _json_body(body)
        # Events are small control messages: they may overdraw by one message so
        # that a control change (baud, DTR) is never stuck behind bulk data, but
        # only from credit the receiver granted (Call.send_event waits for some).
        if state.send_credit <= 0 and self.role is Role.CLIENT:
            raise LocalProtocolError(f"call {call_id}: EVENT without credit")
        state.send_credit -= len(raw)
        return _pack(Kind.EVENT, call_id, raw)

    def send_eof(self, call_id: int) -> bytes:
        state = self._state(call_id)
        if state.local_eof:
            raise LocalProtocolError(f"call {call_id}: EOF twice")
        state.local_eof = True
        return _pack(Kind.EOF, call_id)

    def grant(self, call_id: int, amount: int) -> bytes | None:
        """Agent side: let the client send ``amount`` more bytes on a call (the budget decides)."""
        state = self._calls.get(call_id)
        if state is None or state.remote_eof or amount <= 0:
            return None
        state.recv_allowed += amount
        return _pack(Kind.CREDIT, call_id, amount.to_bytes(4, "big"))

    def consumed(self, call_id: int, amount: int) -> bytes | None:
        """Client side: the application used ``amount`` received bytes; maybe grant credit back."""
        state = self._calls.get(call_id)
        if state is None or state.remote_eof:
            return None
        state.recv_consumed += amount
        if state.recv_consumed < CREDIT_THRESHOLD:
            return None
        grant, state.recv_consumed = state.recv_consumed, 0
        state.recv_allowed += grant
        return _pack(Kind.CREDIT, call_id, grant.to_bytes(4, "big"))

    def send_result(
        self,
        call_id: int,
        ok: bool,
        value: Any = None,
        *,
        code: str = "",
        message: str = "",
    ) -> bytes:
        if self.role is not Role.AGENT:
            raise LocalProtocolError("only the agent sends results")
        self._state(call_id)
        body = (
            {"ok": True, "value": value}
            if ok
            else {
                "ok": False,
                "error": {"code": code, "message": message},
            }
        )
        del self._calls[call_id]
        return _pack(Kind.RESULT, call_id, _json_body(body))

    def send_cancel(self, call_id: int) -> bytes:
        if self.role is not Role.CLIENT:
            raise LocalProtocolError("only the client cancels calls")
        self._state(call_id)
        return _pack(Kind.CANCEL, call_id)

    def send_ping(self, nonce: int) -> bytes:
        return _pack(Kind.PING, nonce)

    def send_goaway(self, code: str, message: str) -> bytes:
        if self.role is not Role.AGENT:
            raise LocalProtocolError("only the agent sends GOAWAY")
        self.closed = True
        return _pack(Kind.GOAWAY, 0, _json_body({"code": code, "message": message}))

    # ---- receiving --------------------------------------------------------------

    def receive(self, message: bytes) -> list[SessionEvent]:
        """Parse one decrypted message; returns the events and any automatic replies."""
        if self.closed:
            raise RemoteProtocolError("message after GOAWAY")
        if len(message) < HEADER.size:
            raise RemoteProtocolError(f"message of {len(message)} bytes is shorter than a header")
        raw_kind, call_id = HEADER.unpack_from(message)
        try:
            kind = Kind(raw_kind)
        except ValueError:
            raise RemoteProtocolError(f"unknown message kind 0x{raw_kind:02x}") from None
        body = message[HEADER.size :]
        handler = _HANDLERS[kind]
        return handler(self, call_id, body)

    def _peer_state(self, kind: Kind, call_id: int) -> _CallState | None:
        """State for a call the peer refers to; None if it already ended (a race, not a bug)."""
        if call_id in self._calls:
            return self._calls[call_id]
        if 0 < call_id < self._next_call_id:
            return None
        raise RemoteProtocolError(f"{kind.name} for call {call_id}, which was never opened")

    def _on_call(self, call_id: int, body: bytes) -> list[SessionEvent]:
        if self.role is not Role.AGENT:
            raise RemoteProtocolError("the agent may not start calls")
        if call_id < self._next_call_id:
            raise RemoteProtocolError(f"call id {call_id} reused or out of order")
        if len(self._calls) >= MAX_OPEN_CALLS:
            raise RemoteProtocolError(f"more than {MAX_OPEN_CALLS} calls open at once")
        obj = _parse_json(Kind.CALL, body)
        if not isinstance(obj, dict) or not isinstance(obj.get("method"), str):
            raise RemoteProtocolError("CALL body must be an object with a 'method' string")
        params = obj.get("params") or {}
        if not isinstance(params, dict):
            raise RemoteProtocolError("CALL 'params' must be an object")
        # No credit for the client's input until the call reads it (see grant).
        self._calls[call_id] = _CallState(recv_allowed=0)
        self._next_call_id = call_id + 1
        return [CallStarted(call_id, obj["method"], params)]

    def _take_credit(self, kind: Kind, state: _CallState, call_id: int, size: int) -> None:
        if state.remote_eof:
            raise RemoteProtocolError(f"{kind.name} after EOF on call {call_id}")
        # EVENTs may overdraw by one message (see send_event); DATA may not. An
        # agent takes an EVENT only on credit it granted: the client's input is
        # bounded by the agent's memory budget, events included.
        if kind is Kind.DATA and size > state.recv_allowed:
            raise RemoteProtocolError(
                f"peer sent {size} bytes on call {call_id} with only {state.recv_allowed} of credit"
            )
        if self.role is Role.AGENT and state.recv_allowed <= 0:
            raise RemoteProtocolError(f"peer sent an EVENT on call {call_id} without credit")
        if state.recv_allowed < -MAX_JSON_BODY:
            raise RemoteProtocolError(f"peer overdrew its credit on call {call_id} with events")
        state.recv_allowed -= size

    def _on_data(self, call_id: int, body: bytes) -> list[SessionEvent]:
        state = self._peer_state(Kind.DATA, call_id)
        if state is None:
            return []
        self._take_credit(Kind.DATA, state, call_id, len(body))
        return [Data(call_id, body)]

    def _on_event(self, call_id: int, body: bytes) -> list[SessionEvent]:
        state = self._peer_state(Kind.EVENT, call_id)
        if state is None:
            return []
        self._take_credit(Kind.EVENT, state, call_id, len(body))
        obj = _parse_json(Kind.EVENT, body)
        if not isinstance(obj, dict):
            raise RemoteProtocolError("EVENT body must be a JSON object")
        return [Event(call_id, obj, len(body))]

    def _on_credit(self, call_id: int, body: bytes) -> list[SessionEvent]:
        if len(body) != 4:
            raise RemoteProtocolError("CREDIT body must be 4 bytes")
        state = self._peer_state(Kind.CREDIT, call_id)
        if state is None:
            return []
        amount = int.from_bytes(body, "big")
        if state.send_credit + amount > MAX_WINDOW:
            raise RemoteProtocolError(f"peer granted more credit than a window on call {call_id}")
        state.send_credit += amount
        return [CreditGranted(call_id, amount)]

    def _on_eof(self, call_id: int, body: bytes) -> list[SessionEvent]:
        state = self._peer_state(Kind.EOF, call_id)
        if state is None:
            return []
        if state.remote_eof:
            raise RemoteProtocolError(f"EOF twice on call {call_id}")
        state.remote_eof = True
        return [EndOfStream(call_id)]

    def _on_result(self, call_id: int, body: bytes) -> list[SessionEvent]:
        if self.role is not Role.CLIENT:
            raise RemoteProtocolError("the client may not send RESULT")
        if call_id not in self._calls:
            raise RemoteProtocolError(f"RESULT for call {call_id}, which is not open")
        obj = _parse_json(Kind.RESULT, body)
        if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
            raise RemoteProtocolError("RESULT body must be an object with an 'ok' boolean")
        del self._calls[call_id]
        if obj["ok"]:
            return [CallResult(call_id, True, obj.get("value"))]
        err = obj.get("error") if isinstance(obj.get("error"), dict) else {}
        return [
            CallResult(call_id, False, None, str(err.get("code", "")), str(err.get("message", "")))
        ]

    def _on_cancel(self, call_id: int, body: bytes) -> list[SessionEvent]:
        if self.role is not Role.AGENT:
            raise RemoteProtocolError("the agent may not send CANCEL")
        if self._peer_state(Kind.CANCEL, call_id) is None:
            return []
        return [CancelRequested(call_id)]

    def _on_ping(self, call_id: int, body: bytes) -> list[SessionEvent]:
        return [Ping(call_id)]

    def _on_pong(self, call_id: int, body: bytes) -> list[SessionEvent]:
        return [Pong(call_id)]

    def _on_goaway(self, call_id: int, body: bytes) -> list[SessionEvent]:
        if self.role is not Role.CLIENT:
            raise RemoteProtocolError("the client may not send GOAWAY")
        obj = _parse_json(Kind.GOAWAY, body)
        if not isinstance(obj, dict):
            raise RemoteProtocolError("GOAWAY body must be a JSON object")
        self.closed = True
        return [GoAway(str(obj.get("code", "")), str(obj.get("message", "")))]

    def pong(self, nonce: int) -> bytes:
        return _pack(Kind.PONG, nonce)

    def finish(self, call_id: int) -> None:
        """Agent side: forget a call without a RESULT (the session is ending)."""
        self._calls.pop(call_id, None)


_HANDLERS = {
    Kind.CALL: Session._on_call,
    Kind.DATA: Session._on_data,
    Kind.EVENT: Session._on_event,
    Kind.CREDIT: Session._on_credit,
    Kind.EOF: Session._on_eof,
    Kind.RESULT: Session._on_result,
    Kind.CANCEL: Session._on_cancel,
    Kind.PING: Session._on_ping,
    Kind.PONG: Session._on_pong,
    Kind.GOAWAY: Session._on_goaway,
}
