"""The monitor's keyboard on Windows: the same bytes reach termkeys as from a UTF-8
POSIX terminal. msvcrt and kernel32 exist only on Windows, so they are stood in for
here by objects that play back keys and keep console modes; the POSIX keyboard is
tested on real ptys in tests/e2e/test_monitor.py."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest

from pio_remote.client.monitor import keyboard, termkeys
from pio_remote.client.monitor.keyboard import WindowsKeys, windows_console


class TypedKeys:
    """msvcrt's getwch and kbhit over a script of what getwch would return."""

    def __init__(self, *chars: str) -> None:
        self.chars = list(chars)

    def getwch(self) -> str:
        return self.chars.pop(0)

    def kbhit(self) -> bool:
        return bool(self.chars)


@pytest.mark.parametrize(
    ("typed", "raw", "sent"),
    [
        (("h", "i", "\r"), False, b"hi\n"),  # Enter, as ICRNL delivers it
        (("h", "i", "\r"), True, b"hi\r"),  # raw: as typed
        (("\xe0", "H", "\x00", ";"), False, b"\x1b[A\x1bOP"),  # up, F1
        (("\xe0", "\x99"), False, b""),  # a key no terminal sends anything for
        (("é", "€"), False, "é€".encode()),
        (("\x03",), False, b"\x03"),
    ],
)
def test_windows_keys_arrive_as_a_utf8_terminal_sends_them(typed, raw, sent):
    assert WindowsKeys(TypedKeys(*typed), raw).read_blocking() == sent


def test_exit_and_menu_characters_act_the_same_from_windows_keys():
    data = WindowsKeys(TypedKeys("\x14", "\x04", "x", "\x03"), raw=False).read_blocking()
    actions = termkeys.KeyHandler(termkeys.DEFAULT_EXIT_CHAR, termkeys.DEFAULT_MENU_CHAR).feed(
        data.decode()
    )
    assert actions == [termkeys.ToggleDTR(), termkeys.Send("x"), termkeys.Exit()]


class Kernel32:
    """Console modes and the output code page, as GetConsoleMode & co. keep them."""

    def __init__(self, consoles: bool = True) -> None:
        self.modes: dict[int, int] = {-10: 0x1F7, -11: 0x3} if consoles else {}
        self.code_page = 437

    def GetStdHandle(self, which: int) -> int:  # noqa: N802
        return which

    def GetConsoleMode(self, handle: int, ref: Any) -> int:  # noqa: N802
        if handle not in self.modes:
            return 0
        ctypes.cast(ref, ctypes.POINTER(ctypes.c_uint32)).contents.value = self.modes[handle]
        return 1

    def SetConsoleMode(self, handle: int, mode: int) -> int:  # noqa: N802
        self.modes[handle] = mode
        return 1

    def GetConsoleOutputCP(self) -> int:  # noqa: N802
        return self.code_page

    def SetConsoleOutputCP(self, page: int) -> int:  # noqa: N802
        self.code_page = page
        return 1


def test_windows_console_takes_ctrl_c_as_a_key_and_restores_everything():
    k32 = Kernel32()
    with pytest.raises(RuntimeError), windows_console(k32):
        assert not k32.modes[-10] & keyboard.ENABLE_PROCESSED_INPUT
        assert k32.modes[-11] & keyboard.ENABLE_VIRTUAL_TERMINAL_PROCESSING
        assert k32.code_page == keyboard.UTF8_CODE_PAGE
        raise RuntimeError("the session ends badly")
    assert k32.modes == {-10: 0x1F7, -11: 0x3} and k32.code_page == 437


def test_windows_console_leaves_redirected_handles_alone():
    k32 = Kernel32(consoles=False)
    with windows_console(k32):
        assert k32.modes == {}
    assert k32.code_page == 437
