"""What a monitor call says besides bytes: serial settings, control ops and notices.

A monitor is one call (``monitor.open``) whose DATA is the port's byte stream
in each direction. Control travels as EVENTs, kept apart from the bytes so a
baud change is never mistaken for data and never waits behind it:

    client -> agent   {"op": "set", "settings": {"baudrate": 115200, "dtr": false}}
                      {"op": "break", "on": true}
                      {"op": "purge", "input": true, "output": false}
    agent -> client   {"event": "opened", "port": str, "settings": {...}, "resumed": bool,
                       "token": str, "offset": int, "continued": bool, "missing": int,
                       "lost": str}
                      {"event": "settings", "settings": {...}}      after a "set"
                      {"event": "lost", "port": str, "reason": str}  unplugged; agent polls
                      {"event": "paused", "port": str, "holder": str}  an upload took it
                      {"event": "warning", "message": str}          e.g. a pty has no DTR

``resumed`` is the port coming back after an unplug or an upload. ``token`` and
``offset`` let a client whose session was lost take the same stream back
(resume.py): ``continued`` says it did, the bytes that follow start at
``offset``, and ``missing`` bytes before it were overwritten in the agent's
ring; ``lost`` (non-empty) says why a resume was asked for but not possible.

Unknown ``event`` kinds parse as ``None`` so an older client ignores what a
newer agent adds; a malformed op is a ``ValueError`` the agent reports back.
Pure code: no I/O, testable without trio.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

PARITIES = ("N", "E", "O", "S", "M")
BYTESIZES = (5, 6, 7, 8)
STOPBITS = (1, 1.5, 2)
# pyserial takes any positive int; real UARTs top out around 12 Mbaud. The cap
# keeps a typo (an extra zero or two) from reaching a driver as a request.
MAX_BAUDRATE = 20_000_000


@dataclass(frozen=True)
class SerialSettings:
    """Line settings with PlatformIO's defaults (9600 8-N-1, no flow control).

    ``dtr``/``rts`` of ``None`` leave the line as the OS opens it (asserted),
    which is what ``pio device monitor`` does without ``--dtr``/``--rts``.
    """

    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    xonxoff: bool = False
    rtscts: bool = False
    dtr: bool | None = None
    rts: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.baudrate, bool) or not isinstance(self.baudrate, int):
            raise ValueError(f"baud rate must be an integer, not {self.baudrate!r}")
        if not 0 < self.baudrate <= MAX_BAUDRATE:
            raise ValueError(f"baud rate {self.baudrate} is out of range (1..{MAX_BAUDRATE})")
        if self.bytesize not in BYTESIZES:
            raise ValueError(f"data bits must be one of 5, 6, 7, 8, not {self.bytesize!r}")
        if self.parity not in PARITIES:
            raise ValueError(f"parity must be one of {', '.join(PARITIES)}, not {self.parity!r}")
        if self.stopbits not in STOPBITS:
            raise ValueError(f"stop bits must be 1, 1.5 or 2, not {self.stopbits!r}")
        for name in ("xonxoff", "rtscts"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false")
        for name in ("dtr", "rts"):
            if getattr(self, name) not in (None, True, False):
                raise ValueError(f"{name} must be true, false or null")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> SerialSettings:
        return cls().updated(raw)

    def updated(self, changes: Any) -> SerialSettings:
        """These settings with ``changes`` (a partial dict) applied; validates."""
        if not isinstance(changes, dict):
            raise ValueError("settings must be a JSON object")
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown serial setting {unknown[0]!r}")
        return replace(self, **changes)

    def describe(self) -> str:
        """``115200 8-N-1`` as miniterm shows it."""
        stop = f"{self.stopbits:g}"
        flow = " RTS/CTS" if self.rtscts else (" XON/XOFF" if self.xonxoff else "")
        return f"{self.baudrate} {self.bytesize}-{self.parity}-{stop}{flow}"


# ---- client -> agent ---------------------------------------------------------------


@dataclass(frozen=True)
class SetSettings:
    changes: dict[str, Any]


@dataclass(frozen=True)
class SetBreak:
    on: bool


@dataclass(frozen=True)
class Purge:
    input: bool
    output: bool


Op = SetSettings | SetBreak | Purge


def set_op(**changes: Any) -> dict[str, Any]:
    SerialSettings().updated(changes)  # fail on the sending side, where the typo is
    return {"op": "set", "settings": changes}


def break_op(on: bool) -> dict[str, Any]:
    return {"op": "break", "on": bool(on)}


def purge_op(input: bool = True, output: bool = True) -> dict[str, Any]:
    return {"op": "purge", "input": bool(input), "output": bool(output)}


def parse_op(body: dict[str, Any]) -> Op:
    kind = body.get("op")
    if kind == "set":
        changes = body.get("settings")
        if not isinstance(changes, dict):
            raise ValueError("'set' needs a 'settings' object")
        return SetSettings(dict(changes))
    if kind == "break":
        return SetBreak(bool(body.get("on")))
    if kind == "purge":
        return Purge(bool(body.get("input")), bool(body.get("output")))
    raise ValueError(f"unknown monitor op {kind!r}")


# ---- agent -> client -----------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    port: str
    settings: SerialSettings
    resumed: bool
    token: str = ""
    offset: int = 0
    continued: bool = False
    missing: int = 0
    lost: str = ""


@dataclass(frozen=True)
class Applied:
    settings: SerialSettings


@dataclass(frozen=True)
class Lost:
    port: str
    reason: str


@dataclass(frozen=True)
class Paused:
    port: str
    holder: str


@dataclass(frozen=True)
class AgentWarning:
    message: str


Notice = Opened | Applied | Lost | Paused | AgentWarning


def opened(
    port: str,
    settings: SerialSettings,
    resumed: bool = False,
    *,
    token: str = "",
    offset: int = 0,
    continued: bool = False,
    missing: int = 0,
    lost: str = "",
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event": "opened",
        "port": port,
        "settings": settings.to_dict(),
        "resumed": resumed,
    }
    if token:
        body |= {"token": token, "offset": offset}
    if continued:
        body |= {"continued": True, "missing": missing}
    if lost:
        body["lost"] = lost
    return body


def applied(settings: SerialSettings) -> dict[str, Any]:
    return {"event": "settings", "settings": settings.to_dict()}


def lost(port: str, reason: str) -> dict[str, Any]:
    return {"event": "lost", "port": port, "reason": reason}


def paused(port: str, holder: str) -> dict[str, Any]:
    return {"event": "paused", "port": port, "holder": holder}


def warning(message: str) -> dict[str, Any]:
    return {"event": "warning", "message": message}


def parse_notice(body: dict[str, Any]) -> Notice | None:
    """The agent's notice, or None for kinds this client does not know."""
    kind = body.get("event")
    try:
        if kind == "opened":
            settings = SerialSettings.from_dict(body.get("settings", {}))
            offset, missing = body.get("offset", 0), body.get("missing", 0)
            for value in (offset, missing):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError("offsets are non-negative integers")
            return Opened(
                str(body["port"]),
                settings,
                bool(body.get("resumed")),
                token=str(body.get("token", "")),
                offset=offset,
                continued=bool(body.get("continued")),
                missing=missing,
                lost=str(body.get("lost", "")),
            )
        if kind == "settings":
            return Applied(SerialSettings.from_dict(body.get("settings", {})))
        if kind == "lost":
            return Lost(str(body.get("port", "")), str(body.get("reason", "")))
        if kind == "paused":
            return Paused(str(body.get("port", "")), str(body.get("holder", "")))
        if kind == "warning":
            return AgentWarning(str(body.get("message", "")))
    except (KeyError, TypeError, ValueError):
        return AgentWarning(f"agent sent a malformed {kind!r} notice")
    return None
