"""RFC 2217 (serial port control over telnet), server side, as a sans-IO state machine.

Feed bytes from the TCP client to ``receive_data()``, get events back
(``DataReceived``, ``SettingsRequested``...), and send ``data_to_send()`` (our
telnet answers) and ``escape(device_bytes)`` back. No sockets here, so the
subset we speak is tested byte for byte without a network.

The subset is what serial tools use (pyserial's ``rfc2217://``, esptool, ser2net
clients): option negotiation for BINARY, SUPPRESS-GO-AHEAD and COM-PORT-OPTION
(44), the COM-PORT-OPTION commands for baud rate, data size, parity, stop size,
control (flow control, BREAK, DTR, RTS), purge, flow suspend/resume, the two
state masks and modem-state polls. Every setting request is answered with the
value as requested (code + 100), which is what clients check; whether the
remote port could apply it is reported by the agent to the user separately.

    IAC SB COM-PORT-OPTION <command> <value, IAC doubled> IAC SE
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pio_remote.wire.serial_events import SerialSettings

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
BINARY, ECHO, SGA, COM_PORT_OPTION = 0, 1, 3, 44
# Options we agree to in both directions; anything else is refused once.
SUPPORTED = frozenset({BINARY, SGA, COM_PORT_OPTION})

# Client-to-server COM-PORT-OPTION commands; the server answers with command + 100.
SIGNATURE, SET_BAUDRATE, SET_DATASIZE, SET_PARITY, SET_STOPSIZE, SET_CONTROL = 0, 1, 2, 3, 4, 5
NOTIFY_LINESTATE, NOTIFY_MODEMSTATE, FLOWCONTROL_SUSPEND, FLOWCONTROL_RESUME = 6, 7, 8, 9
SET_LINESTATE_MASK, SET_MODEMSTATE_MASK, PURGE_DATA = 10, 11, 12
SERVER_OFFSET = 100

PARITY_CODES = {1: "N", 2: "O", 3: "E", 4: "M", 5: "S"}
STOPSIZE_CODES = {1: 1, 2: 2, 3: 1.5}
# SET_CONTROL values (RFC 2217 section 3): requests (queries) and settings.
CONTROL_SETTINGS: dict[int, tuple[str, Any]] = {
    1: ("flow", "none"),
    2: ("flow", "xonxoff"),
    3: ("flow", "rtscts"),
    5: ("break", True),
    6: ("break", False),
    8: ("dtr", True),
    9: ("dtr", False),
    11: ("rts", True),
    12: ("rts", False),
}
# The agent does not watch modem inputs, so they read as a null-modem cable
# would show them: CTS, DSR and CD asserted. A client that waits for CTS works.
MODEMSTATE_CTS, MODEMSTATE_DSR, MODEMSTATE_CD = 0x10, 0x20, 0x80
DEFAULT_MODEMSTATE = MODEMSTATE_CTS | MODEMSTATE_DSR | MODEMSTATE_CD
# Longest subnegotiation we buffer; real ones are a few bytes (a signature text
# is the longest). A client sending more is broken and the excess is dropped.
MAX_SUBNEGOTIATION = 256


@dataclass(frozen=True)
class DataReceived:
    data: bytes


@dataclass(frozen=True)
class SettingsRequested:
    changes: dict[str, Any]


@dataclass(frozen=True)
class BreakRequested:
    on: bool


@dataclass(frozen=True)
class PurgeRequested:
    input: bool
    output: bool


@dataclass(frozen=True)
class FlowSuspended:
    """The client asks us to stop (True) or resume (False) sending it device data."""

    suspended: bool


Rfc2217Event = DataReceived | SettingsRequested | BreakRequested | PurgeRequested | FlowSuspended


def _sb(command: int, value: bytes) -> bytes:
    escaped = value.replace(b"\xff", b"\xff\xff")
    return bytes([IAC, SB, COM_PORT_OPTION, command]) + escaped + bytes([IAC, SE])


class Rfc2217Server:
    """One client connection's telnet and COM-PORT-OPTION state."""

    def __init__(self, settings: SerialSettings, signature: str = "pio-remote") -> None:
        self.settings = settings
        self.signature = signature
        self.break_on = False
        self.modemstate = DEFAULT_MODEMSTATE
        self._out = bytearray()
        self._we: dict[int, bool] = {}  # options we do (WILL) ...
        self._they: dict[int, bool] = {}  # ... and they do (DO)
        self._asked: set[tuple[int, int]] = set()  # (WILL|DO, option) we sent unprompted
        self._refused: set[tuple[int, int]] = set()
        self._mode = "data"  # data | iac | negotiate | sub | sub_iac
        self._verb = 0
        self._sub = bytearray()

    # ---- the caller's side --------------------------------------------------------------

    def start(self) -> None:
        """Offer binary, SGA and COM-PORT-OPTION, as RFC 2217 servers do on connect."""
        for verb, option in ((WILL, BINARY), (DO, BINARY), (WILL, SGA), (WILL, COM_PORT_OPTION)):
            self._asked.add((verb, option))
            self._out += bytes([IAC, verb, option])

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    @staticmethod
    def escape(data: bytes) -> bytes:
        """Device bytes for the client: IAC doubled, everything else unchanged."""
        return data.replace(b"\xff", b"\xff\xff")

    def receive_data(self, data: bytes) -> list[Rfc2217Event]:
        events: list[Rfc2217Event] = []
        plain = bytearray()
        for byte in data:
            mode = self._mode
            if mode == "data":
                if byte == IAC:
                    self._mode = "iac"
                else:
                    plain.append(byte)
            elif mode == "iac":
                self._mode = "data"
                if byte == IAC:
                    plain.append(IAC)
                elif byte in (WILL, WONT, DO, DONT):
                    self._verb, self._mode = byte, "negotiate"
                elif byte == SB:
                    self._sub.clear()
                    self._mode = "sub"
                # NOP, GA, AYT...: RFC 2217 uses none of them; ignored.
            elif mode == "negotiate":
                self._mode = "data"
                self._negotiate(self._verb, byte)
            elif mode == "sub":
                if byte == IAC:
                    self._mode = "sub_iac"
                elif len(self._sub) < MAX_SUBNEGOTIATION:
                    self._sub.append(byte)
            else:  # sub_iac
                if byte == IAC:
                    self._mode = "sub"
                    if len(self._sub) < MAX_SUBNEGOTIATION:
                        self._sub.append(IAC)
                    continue
                self._mode = "data"
                if byte == SE:
                    if plain:
                        events.append(DataReceived(bytes(plain)))
                        plain.clear()
                    events += self._subnegotiation(bytes(self._sub))
        if plain:
            events.append(DataReceived(bytes(plain)))
        return events

    # ---- telnet option negotiation ------------------------------------------------------

    def _negotiate(self, verb: int, option: int) -> None:
        if verb in (DO, DONT):
            state, reply_yes, reply_no, asked = self._we, WILL, WONT, (WILL, option)
        else:
            state, reply_yes, reply_no, asked = self._they, DO, DONT, (DO, option)
        if verb in (DO, WILL):
            if option not in SUPPORTED:
                if (reply_no, option) not in self._refused:  # refuse once: no loops
                    self._refused.add((reply_no, option))
                    self._out += bytes([IAC, reply_no, option])
                return
            if not state.get(option):
                state[option] = True
                if asked in self._asked:
                    self._asked.discard(asked)  # the answer to our own offer
                else:
                    self._out += bytes([IAC, reply_yes, option])
            if verb == WILL and option == COM_PORT_OPTION:
                self._notify_modemstate()
        elif state.get(option):
            state[option] = False
            self._out += bytes([IAC, reply_no, option])

    def _notify_modemstate(self) -> None:
        self._out += _sb(NOTIFY_MODEMSTATE + SERVER_OFFSET, bytes([self.modemstate]))

    # ---- COM-PORT-OPTION ----------------------------------------------------------------

    def _subnegotiation(self, sub: bytes) -> list[Rfc2217Event]:
        if len(sub) < 2 or sub[0] != COM_PORT_OPTION:
            return []
        command, value = sub[1], sub[2:]
        answer = command + SERVER_OFFSET
        s = self.settings
        if command == SIGNATURE:
            if not value:
                self._out += _sb(answer, self.signature.encode())
            return []
        if command == SET_BAUDRATE and len(value) >= 4:
            baud = struct.unpack(">I", value[:4])[0]
            return self._set(
                answer, value[:4], {"baudrate": baud} if baud else {}, struct.pack(">I", s.baudrate)
            )
        if command == SET_DATASIZE and value:
            size = value[0]
            changes = {"bytesize": size} if size else {}
            return self._set(answer, value[:1], changes, bytes([s.bytesize]))
        if command == SET_PARITY and value:
            changes = {"parity": PARITY_CODES[value[0]]} if value[0] in PARITY_CODES else {}
            current = {v: k for k, v in PARITY_CODES.items()}[s.parity]
            return self._set(answer, value[:1], changes, bytes([current]))
        if command == SET_STOPSIZE and value:
            changes = {"stopbits": STOPSIZE_CODES[value[0]]} if value[0] in STOPSIZE_CODES else {}
            current = {v: k for k, v in STOPSIZE_CODES.items()}[s.stopbits]
            return self._set(answer, value[:1], changes, bytes([current]))
        if command == SET_CONTROL and value:
            return self._control(answer, value[0])
        if command == NOTIFY_MODEMSTATE:
            self._notify_modemstate()
        elif command in (FLOWCONTROL_SUSPEND, FLOWCONTROL_RESUME):
            return [FlowSuspended(command == FLOWCONTROL_SUSPEND)]
        elif command in (SET_LINESTATE_MASK, SET_MODEMSTATE_MASK) and value:
            self._out += _sb(answer, value[:1])
        elif command == PURGE_DATA and value and value[0] in (1, 2, 3):
            self._out += _sb(answer, value[:1])
            return [PurgeRequested(input=value[0] in (1, 3), output=value[0] in (2, 3))]
        return []

    def _set(
        self, answer: int, requested: bytes, changes: dict[str, Any], current: bytes
    ) -> list[Rfc2217Event]:
        """Apply a setting (an all-zero value is a query) and echo what was asked."""
        if not changes:
            self._out += _sb(answer, current)
            return []
        try:
            self.settings = self.settings.updated(changes)
        except ValueError:
            self._out += _sb(answer, current)  # refused: the client sees the old value
            return []
        self._out += _sb(answer, requested)
        return [SettingsRequested(changes)]

    def _control(self, answer: int, code: int) -> list[Rfc2217Event]:
        s = self.settings
        if code == 0:  # which flow control?
            flow = 3 if s.rtscts else (2 if s.xonxoff else 1)
            self._out += _sb(answer, bytes([flow]))
        elif code == 4:  # BREAK state?
            self._out += _sb(answer, bytes([5 if self.break_on else 6]))
        elif code == 7:  # DTR state? (unset means asserted, as the OS opens ports)
            self._out += _sb(answer, bytes([9 if s.dtr is False else 8]))
        elif code == 10:  # RTS state?
            self._out += _sb(answer, bytes([12 if s.rts is False else 11]))
        elif code in CONTROL_SETTINGS:
            self._out += _sb(answer, bytes([code]))
            name, value = CONTROL_SETTINGS[code]
            if name == "break":
                self.break_on = value
                return [BreakRequested(value)]
            if name == "flow":
                changes = {"xonxoff": value == "xonxoff", "rtscts": value == "rtscts"}
            else:
                changes = {name: value}
            self.settings = self.settings.updated(changes)
            return [SettingsRequested(changes)]
        else:  # inbound flow control and the rest: acknowledged, not applied
            self._out += _sb(answer, bytes([code]))
        return []
