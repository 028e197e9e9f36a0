"""What both serial backends share: their errors, limits and pyserial line settings.

Nothing here imports ``fcntl`` or ``termios``, so the thread backend (threadport.py)
and the backend choice (backend.py) import on every OS; the fd backend (port.py)
is POSIX-only.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import serial
import trio

from pio_remote.wire.serial_events import SerialSettings

try:  # POSIX: drivers refuse line settings with termios.error, which is no OSError
    from termios import error as _termios_error
except ImportError:  # Windows
    _termios_error = OSError  # type: ignore[assignment,misc]

# One read asks for this much; a pty hands out at most ~4 KiB per read anyway.
READ_SIZE = 64 * 1024
# Reads that find more data waiting are joined up to this size without waiting,
# so a fast device costs one session message per ~64 KiB instead of per 4 KiB.
# It is the session's largest DATA body (session.MAX_BODY) rounded down.
COALESCE_LIMIT = 65_000
# What a driver raises for line settings it will not take.
REFUSED: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    _termios_error,
    serial.SerialException,
)
# What opening a port can raise: it is missing, busy, or refuses every setting.
OPEN_ERRORS = REFUSED
# Errors that mean "this line cannot do that" rather than "the port is broken".
UNSUPPORTED_ERRNOS = frozenset({errno.ENOTTY, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})
LINE_FIELDS = ("baudrate", "bytesize", "parity", "stopbits", "xonxoff", "rtscts")


class PortGone(Exception):
    """The device went away: unplugged, powered off, or its pty was closed."""


class PortClosed(Exception):
    """The port was closed on this side while a task was using it."""


def fallbacks(settings: SerialSettings) -> list[SerialSettings]:
    """What opening tries, in order: as asked, then 8-N-1 at that speed, then defaults."""
    tries = (
        settings,
        settings.updated({"bytesize": 8, "parity": "N", "stopbits": 1, "xonxoff": False}),
        SerialSettings(dtr=settings.dtr, rts=settings.rts),
    )
    return list(dict.fromkeys(tries))  # each distinct one, in order


async def open_first(
    path: str, settings: SerialSettings, opener: Callable[[serial.Serial], None]
) -> tuple[serial.Serial, SerialSettings, list[str]]:
    """Open with the first of ``fallbacks`` the driver takes; the warnings say which.

    ``opener`` runs in a thread (a Bluetooth or USB port can take a while) that
    cannot be abandoned half way, so no handle leaks.
    """
    warnings = []
    for attempt in fallbacks(settings):
        ser = unopened(path, attempt)
        try:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(opener, ser)
        except (ValueError, _termios_error) as exc:
            warnings.append(f"{path}: cannot set {attempt.describe()}: {reason(exc)}")
            continue
        if attempt is not settings:
            warnings.append(f"{path}: opened at {attempt.describe()} instead")
        return ser, attempt, warnings
    raise serial.SerialException(f"{path} refused every line setting tried")


def unopened(path: str, settings: SerialSettings) -> serial.Serial:
    ser = serial.Serial()
    ser.port = path
    configure(ser, settings)
    if settings.dtr is not None:
        ser.dtr = settings.dtr
    if settings.rts is not None:
        ser.rts = settings.rts
    return ser


def configure(ser: serial.Serial, settings: SerialSettings) -> None:
    """Set line parameters on a pyserial object (reconfigures it if open)."""
    ser.apply_settings({name: getattr(settings, name) for name in LINE_FIELDS})


def not_taken(path: str, wanted: SerialSettings, got: SerialSettings) -> str:
    return f"{path} did not take {wanted.describe()}: it runs at {got.describe()}"


def reason(exc: BaseException) -> str:
    """``termios.error`` and ``OSError`` carry (errno, text); show the text."""
    args = exc.args
    if len(args) == 2 and isinstance(args[1], str):
        return args[1]
    return str(exc) or type(exc).__name__


class LineControl:
    """Line settings, modem lines and BREAK on an open pyserial port: same on both backends.

    Line-control requests a port cannot honour (a pty has no DTR/RTS and refuses
    those ioctls with ENOTTY/EINVAL) and line settings the driver refuses come
    back as warning strings, never as errors: the session goes on, and
    ``settings`` says what is in force.
    """

    _ser: serial.Serial
    path: str
    settings: SerialSettings
    closed: bool

    def _read_back(self, wanted: SerialSettings) -> SerialSettings:
        """The settings the driver really holds (``wanted`` where it cannot say)."""
        return wanted

    def apply(self, new: SerialSettings) -> list[str]:
        """Change the live port to ``new``; returns warnings, never raises.

        Afterwards ``self.settings`` holds what is in force: ``new``, or the
        previous line settings where the driver refused ``new``'s.
        """
        warnings: list[str] = []
        old = self.settings
        line = {name: getattr(old, name) for name in LINE_FIELDS}
        if any(getattr(new, name) != value for name, value in line.items()):
            try:
                self._configure(new)
            except REFUSED as exc:
                warnings.append(
                    f"{self.path}: cannot set {new.describe()}: {reason(exc)}; "
                    f"staying at {old.describe()}"
                )
                try:
                    self._configure(old)
                except REFUSED as again:
                    warnings.append(f"{self.path}: cannot go back either: {reason(again)}")
                new = new.updated(line)
        self.settings = self._read_back(new)
        if self.settings != new:
            warnings.append(not_taken(self.path, new, self.settings))
        for name in ("dtr", "rts"):
            value = getattr(new, name)
            if value is None or value == getattr(old, name):
                continue
            warnings += self._modem_line(name, value)
        return warnings

    def _configure(self, settings: SerialSettings) -> None:
        configure(self._ser, settings)

    def _modem_line(self, name: str, value: bool) -> list[str]:
        try:
            setattr(self._ser, name, value)
        except (OSError, serial.SerialException) as exc:
            if getattr(exc, "errno", None) in UNSUPPORTED_ERRNOS:
                return [f"{self.path} has no {name.upper()} line (a pty?): ignored"]
            return [f"{self.path}: cannot set {name.upper()}: {getattr(exc, 'strerror', 0) or exc}"]
        return []

    def set_break(self, on: bool) -> list[str]:
        try:
            self._ser.break_condition = on
        except (OSError, serial.SerialException) as exc:
            return [f"{self.path}: cannot set BREAK: {getattr(exc, 'strerror', 0) or exc}"]
        return []
