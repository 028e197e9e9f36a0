"""The fd serial backend (POSIX): pyserial sets the line up, trio waits on its fd.

pyserial's own ``read``/``write`` block a thread in ``select``; here the port's
file descriptor (pyserial leaves it non-blocking) is read and written directly
after ``trio.lowlevel.wait_readable``/``wait_writable``, so one agent task per
direction costs no thread, and cancelling a monitor is immediate. Where trio
cannot poll a port (Windows) threadport.py does the same job; backend.py chooses.

Two kinds of failure are kept apart because the agent reacts differently:
``PortGone`` (EIO or end of file: the board was unplugged or the pty closed;
poll until it returns) and ``PortClosed`` (we closed it ourselves, e.g. for an
upload; wait until we reopen it). Line-control requests a port cannot honour
(a pty has no DTR/RTS and refuses those ioctls with ENOTTY/EINVAL) and line
settings the driver refuses (``termios.error``, which is not an ``OSError``:
a pty here refuses 7 data bits) come back as warning strings, never as
errors: the session goes on, and ``SerialPort.settings`` says what is in force.
"""

from __future__ import annotations

import fcntl
import os
import termios

import serial
import trio

from pio_remote.agent.serial.common import (
    COALESCE_LIMIT,
    READ_SIZE,
    LineControl,
    PortClosed,
    PortGone,
    configure,
    not_taken,
    open_first,
)
from pio_remote.wire.serial_events import SerialSettings

__all__ = ["COALESCE_LIMIT", "PortClosed", "PortGone", "SerialPort", "in_force"]

# A read that returns less than this emptied the port's buffer: the device is
# slower than we read, so asking again at once would only fail with EAGAIN (a
# syscall and an exception per read, a sixth of the agent's CPU on a farm of
# chatty boards). A pty hands out up to 4 KiB per read while a device floods.
SHORT_READ = 1024


class SerialPort(LineControl):
    """An open port. Create with ``await SerialPort.open(path, settings)``."""

    def __init__(self, ser: serial.Serial, path: str, settings: SerialSettings) -> None:
        self._ser = ser
        self.path = path
        self.settings = settings  # what is in force, as far as the driver took it
        self.fd: int = ser.fileno()
        self.closed = False
        self.has_modem_lines = _has_modem_lines(self.fd)

    @classmethod
    async def open(cls, path: str, settings: SerialSettings) -> tuple[SerialPort, list[str]]:
        """Open and configure; returns the port and warnings for the user.

        Raises ``OSError``/``serial.SerialException`` when the port cannot be
        opened. Line settings the driver refuses are a warning: the port is
        opened with 8-N-1 and no flow control at the same baud rate, else with
        the defaults. The open runs in a thread (a Bluetooth or USB port can
        take a while) and cannot be abandoned half way, so no descriptor leaks.
        """
        ser, attempt, warnings = await open_first(path, settings, _open)
        port = cls(ser, path, in_force(ser.fileno(), attempt))
        if port.settings != attempt:
            warnings.append(not_taken(path, attempt, port.settings))
        if not port.has_modem_lines and (settings.dtr is not None or settings.rts is not None):
            warnings.append(f"{path} has no DTR/RTS lines (a pty?): DTR/RTS settings ignored")
        try:
            await trio.lowlevel.checkpoint()
        except BaseException:
            port.close()
            raise
        return port, warnings

    # ---- data ---------------------------------------------------------------------------

    async def read(self) -> bytes:
        """Wait for bytes; joins whatever else is already waiting (see COALESCE_LIMIT)."""
        waited = False
        while True:
            data = self._read_now(READ_SIZE)
            if data is not None:
                break
            waited = True
            try:
                await trio.lowlevel.wait_readable(self.fd)
            except trio.ClosedResourceError:
                raise PortClosed(self.path) from None
        if not waited:
            await trio.lowlevel.checkpoint()
        if len(data) < SHORT_READ:
            return data
        more = self.read_waiting(COALESCE_LIMIT - len(data))
        return data + more if more else data

    def read_waiting(self, limit: int) -> bytes:
        """What is waiting now, up to ``limit`` bytes, without waiting (b"" if nothing).

        A port that is gone or closed reads as b"" here: the next ``read()``
        reports it, after the bytes already read are delivered.
        """
        parts, size = [], 0
        while size < limit:
            try:
                more = self._read_now(limit - size)
            except (PortGone, PortClosed):
                break
            if not more:
                break
            parts.append(more)
            size += len(more)
            if len(more) < SHORT_READ:
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_now(self, size: int) -> bytes | None:
        """Bytes if any are waiting, None if none; raises if the port is gone or closed."""
        if self.closed:
            raise PortClosed(self.path)
        try:
            data = os.read(self.fd, size)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise PortGone(f"{self.path}: {exc.strerror or exc}") from None
        if not data:
            raise PortGone(f"{self.path}: end of file (device disconnected)")
        return data

    async def write(self, data: bytes) -> None:
        """Write everything, waiting while the device's buffer is full."""
        view = memoryview(data)
        while view:
            if self.closed:
                raise PortClosed(self.path)
            try:
                view = view[os.write(self.fd, view) :]
                continue
            except BlockingIOError:
                pass
            except OSError as exc:
                raise PortGone(f"{self.path}: {exc.strerror or exc}") from None
            try:
                await trio.lowlevel.wait_writable(self.fd)
            except trio.ClosedResourceError:
                raise PortClosed(self.path) from None
        await trio.lowlevel.checkpoint()

    # ---- line control (apply, set_break: common.LineControl) ------------------------

    def _read_back(self, wanted: SerialSettings) -> SerialSettings:
        return in_force(self.fd, wanted)

    def _configure(self, settings: SerialSettings) -> None:
        _configure(self._ser, settings)

    def purge(self, input: bool, output: bool) -> None:
        """Drop buffered bytes, as an RFC 2217 PURGE_DATA asks."""
        queue = {
            (True, True): termios.TCIOFLUSH,
            (True, False): termios.TCIFLUSH,
            (False, True): termios.TCOFLUSH,
        }.get((input, output))
        if queue is not None and not self.closed:
            try:
                termios.tcflush(self.fd, queue)
            except OSError:
                pass

    def close(self) -> None:
        """Close now; tasks waiting on the port get ``PortClosed``."""
        if self.closed:
            return
        self.closed = True
        try:
            trio.lowlevel.notify_closing(self.fd)
        except RuntimeError:
            pass  # not inside trio (tests, or shutting down)
        try:
            self._ser.close()
        except (OSError, serial.SerialException):
            pass

    async def wait_closed(self) -> None:
        """Closed for the OS too once ``close()`` returns: nothing to wait for here."""
        await trio.lowlevel.checkpoint()


_CSIZE_BITS = {termios.CS5: 5, termios.CS6: 6, termios.CS7: 7, termios.CS8: 8}
_BAUDS = {
    getattr(termios, f"B{rate}"): rate
    for rate in (50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200)
    + (38400, 57600, 115200, 230400, 460800, 500000, 576000, 921600, 1000000, 1152000)
    + (1500000, 2000000, 2500000, 3000000, 3500000, 4000000)
    if hasattr(termios, f"B{rate}")
}


def in_force(fd: int, wanted: SerialSettings) -> SerialSettings:
    """The line settings the driver really holds, read back: a driver may drop some
    silently (a pty keeps 8 data bits when asked for 7, unless nothing else changed,
    when it refuses with EINVAL). Baud rates without a B* constant are taken as set."""
    try:
        iflag, _oflag, cflag, _lflag, _ispeed, ospeed, _cc = termios.tcgetattr(fd)
    except termios.error:
        return wanted
    parity = "N"
    if cflag & termios.PARENB:
        mark_space = bool(cflag & getattr(termios, "CMSPAR", 0))
        odd = bool(cflag & termios.PARODD)
        parity = ("M" if odd else "S") if mark_space else ("O" if odd else "E")
    bytesize = _CSIZE_BITS.get(cflag & termios.CSIZE, wanted.bytesize)
    stopbits: float = 1
    if cflag & termios.CSTOPB:
        stopbits = 1.5 if wanted.stopbits == 1.5 else 2
    return wanted.updated(
        {
            "baudrate": _BAUDS.get(ospeed, wanted.baudrate),
            "bytesize": bytesize,
            "parity": parity,
            "stopbits": stopbits,
            "xonxoff": bool(iflag & termios.IXON),
            "rtscts": bool(cflag & termios.CRTSCTS),
        }
    )


def _configure(ser: serial.Serial, settings: SerialSettings) -> None:
    """Set line parameters (reconfigures the port if open), keeping VMIN=1."""
    configure(ser, settings)
    if ser.is_open:
        _read_returns_data_or_eagain(ser.fileno())


def _read_returns_data_or_eagain(fd: int) -> None:
    """VMIN=1: pyserial sets VMIN=0, under which an idle read returns b"" like end of file.

    With VMIN=1 a non-blocking read with nothing to read fails with EAGAIN, so
    an empty read means what it says: the line hung up (USB unplugged).
    """
    attrs = termios.tcgetattr(fd)
    if attrs[6][termios.VMIN] != 1 or attrs[6][termios.VTIME] != 0:
        attrs[6][termios.VMIN] = 1
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _open(ser: serial.Serial) -> None:
    ser.open()
    try:
        _read_returns_data_or_eagain(ser.fileno())
    except BaseException:
        ser.close()
        raise


def _has_modem_lines(fd: int) -> bool:
    """Whether TIOCMGET works: real UARTs yes, ptys no."""
    try:
        fcntl.ioctl(fd, termios.TIOCMGET, b"\0\0\0\0")
    except OSError:
        return False
    return True
