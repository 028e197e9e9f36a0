"""The portable serial backend: pyserial's blocking calls in a worker thread per port.

trio can wait on a serial fd only where ports are fds it may poll (POSIX); on
Windows it waits on sockets alone. There, and wherever ``agent start
--serial-backend thread`` asks for it, a port is this class: same interface as
port.SerialPort, so the monitor and the test runner do not know which they hold.

Bytes already waiting in the driver are read at once in trio's thread
(``in_waiting``, then a ``read`` of no more than that, which does not block on
any OS); only a ``read()`` that finds nothing wakes the port's reader thread,
which blocks in ``Serial.read`` and hands one chunk (up to COALESCE_LIMIT bytes)
to trio. So a board that trickles costs no thread switch per batch (the monitor
gathers it with ``read_waiting``), and the flow control is the fd backend's: the
port is read only when trio asks, at most one chunk ahead. A client that gives
no credit stops the monitor asking, and the device blocks in the OS as before.
Writes run in trio's worker threads, one at a time; cancelling one aborts it
(``Serial.cancel_write``). ``close()`` aborts the reader (``cancel_read``), which
then closes the handle; ``wait_closed()`` waits for that, so a monitor that hands
its port to an uploader (which on Windows could not open a port still open) or
reopens it knows the handle is gone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import outcome
import serial
import trio

from pio_remote.agent.serial.common import (
    COALESCE_LIMIT,
    LineControl,
    PortClosed,
    PortGone,
    not_taken,
    open_first,
)
from pio_remote.wire.serial_events import SerialSettings

try:  # read the line back from the driver where termios can (POSIX)
    from pio_remote.agent.serial.port import in_force as _posix_in_force
except ImportError:  # Windows: pyserial's view is all there is
    _posix_in_force = None  # type: ignore[assignment]

# The reader wakes this often even with nothing to read, so a close that races its
# next read (where cancel_read cannot reach it, as on Windows) still ends it.
READ_POLL = 1.0


class ThreadSerialPort(LineControl):
    """An open port. Create with ``await ThreadSerialPort.open(path, settings)``."""

    def __init__(self, ser: serial.Serial, path: str, settings: SerialSettings) -> None:
        self._ser = ser
        self.path = path
        self.settings = settings
        self.closed = False
        self.has_modem_lines = _has_modem_lines(ser)
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()  # guards the four fields below
        self._chunk = b""  # read by the thread, not yet taken by trio
        self._gone: PortGone | None = None
        self._waiter: trio.Event | None = None  # trio waits in read()
        self._reading = False  # the thread is in Serial.read: trio must not read too
        self._handle_open = True
        self._wanted = threading.Event()  # trio waits for bytes: the thread reads
        self._writing = threading.Lock()  # the handle outlives a write in flight
        self._handle_closed = trio.Event()
        self._thread = threading.Thread(target=self._reader, name=f"serial {path}", daemon=True)

    @classmethod
    async def open(cls, path: str, settings: SerialSettings) -> tuple[ThreadSerialPort, list[str]]:
        """Open and configure; returns the port and warnings (as SerialPort.open)."""
        ser, attempt, warnings = await open_first(path, settings, _open)
        port = cls(ser, path, attempt)
        port.settings = port._read_back(attempt)
        if port.settings != attempt:
            warnings.append(not_taken(path, attempt, port.settings))
        if not port.has_modem_lines and (settings.dtr is not None or settings.rts is not None):
            warnings.append(f"{path} has no DTR/RTS lines (a pty?): DTR/RTS settings ignored")
        port._thread.start()
        try:
            await trio.lowlevel.checkpoint()
        except BaseException:
            port.close()
            raise
        return port, warnings

    # ---- the reader thread ------------------------------------------------------------

    def _reader(self) -> None:
        ser = self._ser
        try:
            while True:
                self._wanted.wait()
                with self._lock:
                    if self.closed:
                        return
                    self._reading = True
                try:
                    data = ser.read(1)
                    waiting = ser.in_waiting if data else 0
                    if waiting and not self.closed:
                        data += ser.read(min(waiting, COALESCE_LIMIT - 1))
                except (OSError, serial.SerialException) as exc:
                    if not self.closed:
                        self._hand_over(b"", PortGone(f"{self.path}: {_why(exc)}"))
                    return
                if self.closed:
                    return
                if data:
                    self._hand_over(data, None)
                else:
                    with self._lock:  # READ_POLL passed: trio still waits, read again
                        self._reading = False
        finally:
            with self._writing, self._lock:
                self._handle_open = False
                try:
                    ser.close()
                except (OSError, serial.SerialException):
                    pass
            self._to_trio(self._handle_closed.set)

    def _hand_over(self, data: bytes, gone: PortGone | None) -> None:
        with self._lock:
            self._chunk = data
            self._gone = gone
            self._reading = False
            self._wanted.clear()
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._to_trio(waiter.set)

    def _to_trio(self, fn: Callable[[], object]) -> None:
        try:
            self._token.run_sync_soon(fn)
        except trio.RunFinishedError:
            pass  # the agent is shutting down: nobody waits any more

    # ---- data ---------------------------------------------------------------------------

    async def read(self) -> bytes:
        """Wait for bytes: what is waiting, else the reader thread's next chunk."""
        while True:
            event = trio.Event()
            with self._lock:
                data = self._take_locked(COALESCE_LIMIT)
                if not data and not self.closed and self._gone is None:
                    self._waiter = event
                    self._wanted.set()
            if data:
                await trio.lowlevel.checkpoint()
                return data
            if self.closed:
                raise PortClosed(self.path)
            if self._gone is not None:
                raise self._gone
            try:
                await event.wait()
            finally:
                with self._lock:
                    if self._waiter is event:
                        self._waiter = None

    def read_waiting(self, limit: int) -> bytes:
        """What is waiting now, up to ``limit`` bytes, without waiting (b"" if nothing).

        A port that is gone reads as b"" here: the next ``read()`` reports it.
        """
        with self._lock:
            return self._take_locked(limit)

    def _take_locked(self, limit: int) -> bytes:
        """The thread's chunk if it holds one; else, if it is not reading, the driver's."""
        if self._chunk:
            data, self._chunk = self._chunk[:limit], self._chunk[limit:]
            return data
        if self._reading or self.closed or self._gone is not None or not self._handle_open:
            return b""
        try:
            waiting = self._ser.in_waiting
            return self._ser.read(min(waiting, limit)) if waiting else b""
        except (OSError, serial.SerialException) as exc:
            self._gone = PortGone(f"{self.path}: {_why(exc)}")
            return b""

    async def write(self, data: bytes) -> None:
        """Write everything in a worker thread; cancelling aborts the write and closes the port."""
        if self.closed:
            raise PortClosed(self.path)
        done = trio.Event()
        result: list[outcome.Outcome[None]] = []

        def deliver(value: outcome.Outcome[None]) -> None:
            result.append(value)
            self._to_trio(done.set)

        trio.lowlevel.start_thread_soon(lambda: self._write(data), deliver)
        try:
            await done.wait()
        except trio.Cancelled:
            self.close()  # an abort may linger in pyserial: this handle is done
            with trio.CancelScope(shield=True):
                await done.wait()
            raise
        result[0].unwrap()

    def _write(self, data: bytes) -> None:
        with self._writing:
            if self.closed or not self._handle_open:
                raise PortClosed(self.path)
            try:
                self._ser.write(data)
            except (OSError, serial.SerialException) as exc:
                if self.closed:
                    raise PortClosed(self.path) from None
                raise PortGone(f"{self.path}: {_why(exc)}") from None

    # ---- line control (apply, set_break: common.LineControl) ------------------------

    def _read_back(self, wanted: SerialSettings) -> SerialSettings:
        if _posix_in_force is None:
            return wanted
        return _posix_in_force(self._ser.fileno(), wanted)

    def purge(self, input: bool, output: bool) -> None:
        """Drop buffered bytes, as an RFC 2217 PURGE_DATA asks."""
        if self.closed:
            return
        try:
            if input:
                self.read_waiting(COALESCE_LIMIT)
                self._ser.reset_input_buffer()
            if output:
                self._ser.reset_output_buffer()
        except (OSError, serial.SerialException):
            pass

    def close(self) -> None:
        """Close now; tasks waiting on the port get ``PortClosed``; the reader closes the handle."""
        if self.closed:
            return
        self.closed = True
        with self._lock:
            waiter, self._waiter = self._waiter, None
            if self._handle_open:
                for cancel in (self._ser.cancel_read, self._ser.cancel_write):
                    try:
                        cancel()
                    except (OSError, serial.SerialException):
                        pass
        self._wanted.set()
        if waiter is not None:
            waiter.set()
        if not self._thread.is_alive() and self._thread.ident is None:
            self._ser.close()  # never started (cancelled while opening)
            self._handle_closed.set()

    async def wait_closed(self) -> None:
        """Until the reader thread has closed the handle (after ``close()``)."""
        await self._handle_closed.wait()


def _open(ser: serial.Serial) -> None:
    ser.timeout = READ_POLL
    ser.open()


def _has_modem_lines(ser: serial.Serial) -> bool:
    """Whether the modem status can be read: real UARTs yes, ptys no."""
    try:
        ser.cts  # noqa: B018 - the read is the test
    except (OSError, serial.SerialException):
        return False
    return True


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
