"""Key handling for the remote serial monitor, as a pure state machine.

Typed characters go in, :data:`Action` values come out; the I/O layer carries
them out (send bytes, toggle a modem line on the agent, prompt for a baud
rate, ...). Keys follow pyserial's miniterm, which ``pio device monitor`` is
built on, with PlatformIO's defaults: exit on Ctrl+C (3), menu on Ctrl+T (20).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_EXIT_CHAR = 3  # Ctrl+C, PlatformIO's --exit-char default
DEFAULT_MENU_CHAR = 20  # Ctrl+T, PlatformIO's --menu-char default


@dataclass(frozen=True)
class Send:
    """Typed text for the device; goes through the tx filters (and echo)."""

    text: str


@dataclass(frozen=True)
class SendLiteral:
    """Menu or exit character typed after the menu key: sent as-is, unfiltered."""

    text: str


@dataclass(frozen=True)
class Exit:
    pass


@dataclass(frozen=True)
class ShowHelp:
    pass


@dataclass(frozen=True)
class ShowInfo:
    pass


@dataclass(frozen=True)
class ToggleRTS:
    pass


@dataclass(frozen=True)
class ToggleDTR:
    pass


@dataclass(frozen=True)
class ToggleBreak:
    pass


@dataclass(frozen=True)
class ToggleEcho:
    pass


@dataclass(frozen=True)
class CycleEOL:
    """Switch CRLF -> CR -> LF -> CRLF (see ``filters.next_eol``) and rebuild filters."""


@dataclass(frozen=True)
class PromptBaud:
    """Ask for a baud rate; the prompt needs the line-mode terminal, so it is I/O."""


@dataclass(frozen=True)
class PromptPort:
    pass


@dataclass(frozen=True)
class PromptEncoding:
    pass


@dataclass(frozen=True)
class PromptFilters:
    pass


@dataclass(frozen=True)
class PromptUploadFile:
    pass


@dataclass(frozen=True)
class SuspendPort:
    pass


@dataclass(frozen=True)
class SetDataBits:
    bits: int


@dataclass(frozen=True)
class SetParity:
    parity: str  # pyserial's letter: N E O S M


@dataclass(frozen=True)
class SetStopBits:
    bits: float  # 1, 1.5 or 2


@dataclass(frozen=True)
class SetXonXoff:
    enabled: bool


@dataclass(frozen=True)
class SetRtsCts:
    enabled: bool


@dataclass(frozen=True)
class UnknownMenuKey:
    """Report it rather than send it: the user meant a command, not data."""

    key: str


Action = (
    Send
    | SendLiteral
    | Exit
    | ShowHelp
    | ShowInfo
    | ToggleRTS
    | ToggleDTR
    | ToggleBreak
    | ToggleEcho
    | CycleEOL
    | PromptBaud
    | PromptPort
    | PromptEncoding
    | PromptFilters
    | PromptUploadFile
    | SuspendPort
    | SetDataBits
    | SetParity
    | SetStopBits
    | SetXonXoff
    | SetRtsCts
    | UnknownMenuKey
)

# Keys after the menu character, as in miniterm's menu.
_MENU: dict[str, Action] = {
    "\x15": PromptUploadFile(),  # Ctrl+U
    "\x08": ShowHelp(),  # Ctrl+H (and Backspace)
    "h": ShowHelp(),
    "H": ShowHelp(),
    "?": ShowHelp(),
    "\x12": ToggleRTS(),  # Ctrl+R
    "\x04": ToggleDTR(),  # Ctrl+D
    "\x02": ToggleBreak(),  # Ctrl+B
    "\x05": ToggleEcho(),  # Ctrl+E
    "\x06": PromptFilters(),  # Ctrl+F
    "\x0c": CycleEOL(),  # Ctrl+L
    "\x01": PromptEncoding(),  # Ctrl+A
    "\x09": ShowInfo(),  # Ctrl+I
    "p": PromptPort(),
    "P": PromptPort(),
    "z": SuspendPort(),
    "Z": SuspendPort(),
    "b": PromptBaud(),
    "B": PromptBaud(),
    "8": SetDataBits(8),
    "7": SetDataBits(7),
    "1": SetStopBits(1),
    "2": SetStopBits(2),
    "3": SetStopBits(1.5),
    "x": SetXonXoff(False),
    "X": SetXonXoff(True),
    "r": SetRtsCts(False),
    "R": SetRtsCts(True),
    "q": Exit(),
    "Q": Exit(),
}
for _letter in "NEOSM":
    _MENU[_letter] = _MENU[_letter.lower()] = SetParity(_letter)


def _as_char(value: int | str) -> str:
    if isinstance(value, int):
        return chr(value)
    if len(value) != 1:
        raise ValueError(f"expected a single character, got {value!r}")
    return value


def key_description(ch: str) -> str:
    """How the help and banner name a key: ``Ctrl+T`` or ``'q'``."""
    code = ord(ch)
    return f"Ctrl+{chr(ord('@') + code)}" if code < 32 else repr(ch)


class KeyHandler:
    """Turns typed characters into actions, with miniterm's one-key menu.

    ``map_cr_to_lf`` and ``map_del_to_bs`` reproduce what miniterm's console
    delivers (ICRNL; DEL read as Backspace), so Enter means "\\n" to the EOL
    transform and Backspace works even if the terminal is in full raw mode.
    """

    def __init__(
        self,
        exit_char: int | str = DEFAULT_EXIT_CHAR,
        menu_char: int | str = DEFAULT_MENU_CHAR,
        *,
        map_cr_to_lf: bool = True,
        map_del_to_bs: bool = True,
    ) -> None:
        self.exit_char = _as_char(exit_char)
        self.menu_char = _as_char(menu_char)
        if self.exit_char == self.menu_char:
            raise ValueError("--exit-char can not be the same as --menu-char")
        self.map_cr_to_lf = map_cr_to_lf
        self.map_del_to_bs = map_del_to_bs
        self.menu_active = False

    def feed(self, text: str) -> list[Action]:
        """Process typed text (one key or a paste); plain runs merge into one Send."""
        actions: list[Action] = []
        plain: list[str] = []
        for ch in text:
            if self.map_cr_to_lf and ch == "\r":
                ch = "\n"
            elif self.map_del_to_bs and ch == "\x7f":
                ch = "\b"
            if self.menu_active:
                self.menu_active = False
                action = self._menu_action(ch)
            elif ch == self.menu_char:
                self.menu_active = True
                continue
            elif ch == self.exit_char:
                action = Exit()
            else:
                plain.append(ch)
                continue
            if plain:
                actions.append(Send("".join(plain)))
                plain.clear()
            actions.append(action)
            if isinstance(action, Exit):
                return actions  # nothing typed after exit matters
        if plain:
            actions.append(Send("".join(plain)))
        return actions

    def _menu_action(self, ch: str) -> Action:
        if ch in (self.menu_char, self.exit_char):
            return SendLiteral(ch)
        return _MENU.get(ch, UnknownMenuKey(ch))

    def help_text(self) -> str:
        return help_text(self.exit_char, self.menu_char)

    def banner(self) -> str:
        return banner(self.exit_char, self.menu_char)


def banner(
    exit_char: int | str = DEFAULT_EXIT_CHAR, menu_char: int | str = DEFAULT_MENU_CHAR
) -> str:
    """The one-line hint PlatformIO prints when the monitor starts."""
    menu = key_description(_as_char(menu_char))
    return (
        f"--- Quit: {key_description(_as_char(exit_char))} | Menu: {menu} | "
        f"Help: {menu} followed by {key_description(chr(8))}\n"
    )


def help_text(
    exit_char: int | str = DEFAULT_EXIT_CHAR, menu_char: int | str = DEFAULT_MENU_CHAR
) -> str:
    """The menu help, laid out like miniterm's so users find familiar keys."""
    ex = key_description(_as_char(exit_char))
    menu = key_description(_as_char(menu_char))

    def k(code: int) -> str:
        return f"{key_description(chr(code)):7}"

    return (
        "\n--- pio-remote device monitor - help\n"
        "---\n"
        f"--- {ex:8} Exit program (alias {menu} Q)\n"
        f"--- {menu:8} Menu escape key, followed by:\n"
        "--- Menu keys:\n"
        f"---    {menu:7} Send the menu character itself to remote\n"
        f"---    {ex:7} Send the exit character itself to remote\n"
        f"---    {k(9)} Show info\n"
        f"---    {k(21)} Upload file (prompt will be shown)\n"
        f"---    {k(1)} encoding\n"
        f"---    {k(6)} edit filters\n"
        "--- Toggles:\n"
        f"---    {k(18)} RTS   {k(4)} DTR   {k(2)} BREAK\n"
        f"---    {k(5)} echo  {k(12)} EOL\n"
        "---\n"
        f"--- Port settings ({menu} followed by the following):\n"
        "---    7 8        set data bits\n"
        "---    N E O S M  change parity (None, Even, Odd, Space, Mark)\n"
        "---    1 2 3      set stop bits (1, 2, 1.5)\n"
        "---    b          change baud rate\n"
        "---    x X        disable/enable software flow control\n"
        "---    r R        disable/enable hardware flow control\n"
    )
