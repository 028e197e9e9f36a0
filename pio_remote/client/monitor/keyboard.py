"""The monitor's keyboard in terminal mode: typed keys as bytes, the same on every OS.

One small interface, ``Keyboard.read()``, over two consoles, as in pyserial's miniterm
(``serial.tools.miniterm.Console``):

- POSIX: termios puts the terminal in character mode; bytes are read from fd 0.
- Windows: ``msvcrt.getwch`` reads keys; Enter, arrows and function keys become what
  an xterm sends, and text is UTF-8, so ``termkeys`` sees the bytes a UTF-8 POSIX
  terminal would send and the exit and menu characters act the same.

Neither ``termios`` nor ``msvcrt`` is imported before a keyboard is opened: pipe mode
and the rest of the client never need them. Reads run in worker threads that are
abandoned on cancel, because neither console can be woken portably.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import trio

KEYS_READ = 64 * 1024
# Windows console modes (wincon.h): keys that raise signals, and escape sequences on output.
ENABLE_PROCESSED_INPUT = 0x0001
ENABLE_VIRTUAL_TERMINAL_PROCESSING = 0x0004
STD_INPUT_HANDLE = -10
STD_OUTPUT_HANDLE = -11
UTF8_CODE_PAGE = 65001
# getwch() returns "\x00" or "\xe0" and then a scan code for keys without a character.
_PREFIXES = ("\x00", "\xe0")
_SCAN_CODES = {
    "H": "\x1b[A",  # up
    "P": "\x1b[B",  # down
    "M": "\x1b[C",  # right
    "K": "\x1b[D",  # left
    "G": "\x1b[H",  # home
    "O": "\x1b[F",  # end
    "R": "\x1b[2~",  # insert
    "S": "\x1b[3~",  # delete
    "I": "\x1b[5~",  # page up
    "Q": "\x1b[6~",  # page down
    ";": "\x1bOP",  # F1
    "<": "\x1bOQ",
    "=": "\x1bOR",
    ">": "\x1bOS",
    "?": "\x1b[15~",  # F5
    "@": "\x1b[17~",
    "A": "\x1b[18~",
    "B": "\x1b[19~",
    "C": "\x1b[20~",
    "D": "\x1b[21~",  # F10
    "\x85": "\x1b[23~",  # F11
    "\x86": "\x1b[24~",  # F12
}


class Keyboard(Protocol):
    async def read(self) -> bytes:
        """What was typed since the last read, as a UTF-8 terminal sends it; b"" at end."""
        ...


@contextmanager
def open_keyboard(raw: bool) -> Iterator[Keyboard]:
    """The console in character mode for as long as the block runs, restored on every way
    out. ``raw``: typed bytes reach the device untranslated (no CR to NL, no XON/XOFF)."""
    if sys.platform == "win32":
        import ctypes
        import msvcrt

        with windows_console(ctypes.windll.kernel32):
            yield WindowsKeys(msvcrt, raw)
    else:
        with terminal_mode(raw):
            yield PosixKeys()


class PosixKeys:
    async def read(self) -> bytes:
        return await trio.to_thread.run_sync(os.read, 0, KEYS_READ, abandon_on_cancel=True)


@contextmanager
def terminal_mode(raw: bool) -> Iterator[None]:
    """Character-at-a-time input without echo, restored on every way out.

    Like miniterm: no canonical mode, no echo, no signals from keys (Ctrl+C is
    the exit character, not SIGINT); output processing stays on so the
    screen's newlines work. ``raw`` also stops input translation (CR to NL,
    XON/XOFF) so every typed byte reaches the device as typed.
    """
    import termios

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    new = termios.tcgetattr(fd)
    new[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)
    if raw:
        new[0] &= ~(termios.ICRNL | termios.INLCR | termios.IGNCR | termios.IXON | termios.ISTRIP)
    new[6][termios.VMIN] = 1
    new[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, new)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class WindowsKeys:
    """Keys from ``msvcrt`` (passed in, so the translation is testable off Windows)."""

    def __init__(self, msvcrt: Any, raw: bool) -> None:
        self._getwch: Callable[[], str] = msvcrt.getwch
        self._kbhit: Callable[[], bool] = msvcrt.kbhit
        self.raw = raw

    async def read(self) -> bytes:
        return await trio.to_thread.run_sync(self.read_blocking, abandon_on_cancel=True)

    def read_blocking(self) -> bytes:
        """One key, waiting for it, and every key already typed after it (a paste)."""
        text = self._key()
        while self._kbhit():
            text += self._key()
        return text.encode("utf-8", "replace")

    def _key(self) -> str:
        ch = self._getwch()
        if ch in _PREFIXES:
            return _SCAN_CODES.get(self._getwch(), "")
        if ch == "\r" and not self.raw:
            return "\n"  # as a POSIX terminal's ICRNL delivers Enter
        return ch


@contextmanager
def windows_console(kernel32: Any) -> Iterator[None]:
    """Ctrl+C as a key, not a signal (POSIX's ISIG off), and UTF-8 output that may carry
    escape sequences; every mode and the code page restored on the way out."""
    stdin = kernel32.GetStdHandle(STD_INPUT_HANDLE)
    stdout = kernel32.GetStdHandle(STD_OUTPUT_HANDLE)
    in_mode, out_mode = _console_mode(kernel32, stdin), _console_mode(kernel32, stdout)
    code_page = kernel32.GetConsoleOutputCP()
    if in_mode is not None:
        kernel32.SetConsoleMode(stdin, in_mode & ~ENABLE_PROCESSED_INPUT)
    if out_mode is not None:
        kernel32.SetConsoleMode(stdout, out_mode | ENABLE_VIRTUAL_TERMINAL_PROCESSING)
    kernel32.SetConsoleOutputCP(UTF8_CODE_PAGE)
    try:
        yield
    finally:
        kernel32.SetConsoleOutputCP(code_page)
        if out_mode is not None:
            kernel32.SetConsoleMode(stdout, out_mode)
        if in_mode is not None:
            kernel32.SetConsoleMode(stdin, in_mode)


def _console_mode(kernel32: Any, handle: object) -> int | None:
    """A console handle's mode; None when it is not a console (redirected)."""
    import ctypes

    mode = ctypes.c_uint32()
    if not kernel32.GetConsoleMode(handle, ctypes.byref(mode)):
        return None
    return int(mode.value)
