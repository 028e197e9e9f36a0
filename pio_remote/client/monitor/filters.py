"""Serial monitor filters, compatible with ``pio device monitor`` / miniterm.

Filters run on the client: the agent only moves bytes, so everything that
changes what the user sees or sends lives here, as pure code (feed text in,
take text out). The I/O layer owns sockets, the terminal and the clock.

Ordering follows PlatformIO exactly, because users' ``monitor_filters`` lists
depend on it. PlatformIO hands miniterm the user's list *reversed*, and
miniterm puts the EOL transform first, so for ``-f a -f b``:

* transform list: ``[EOL, b, a]``
* ``tx`` (keyboard -> device) and ``echo`` walk the list forwards: EOL, b, a;
* ``rx`` (device -> screen) walks it backwards: a, b, EOL.

An empty filter list means ``["default"]``, as in PlatformIO.

One deliberate difference from miniterm: in CRLF mode ``rx`` collapses
``"\\r\\n"`` to ``"\\n"`` (miniterm leaves it alone), so ``tx`` and ``rx``
round-trip. The screen must therefore translate ``"\\n"`` to a new line, which
a terminal with OPOST/ONLCR enabled (miniterm's console setup) does.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import ClassVar, TextIO

Clock = Callable[[], datetime]
NoteSink = Callable[[str], None]
LogOpener = Callable[[Path], TextIO]

EOL_MODES: tuple[str, ...] = ("CRLF", "CR", "LF")
LOG_FILENAME_FORMAT = "platformio-device-monitor-%y%m%d-%H%M%S.log"


class Codec:
    """Incremental text codec: serial reads split multi-byte characters."""

    def __init__(self, encoding: str = "utf-8", errors: str = "replace") -> None:
        self.encoding = codecs.lookup(encoding).name
        self.errors = errors
        self._decoder = codecs.getincrementaldecoder(encoding)(errors)
        self._encoder = codecs.getincrementalencoder(encoding)(errors)

    def decode(self, data: bytes, final: bool = False) -> str:
        """Decode; an incomplete trailing sequence waits for the next call."""
        return self._decoder.decode(data, final)

    def flush(self) -> str:
        """Decode whatever is still pending (as replacement characters if broken)."""
        return self._decoder.decode(b"", True)

    def encode(self, text: str) -> bytes:
        return self._encoder.encode(text)


class Transform:
    """A miniterm-style transform; the base class forwards everything unchanged."""

    name: ClassVar[str] = "direct"
    description: ClassVar[str] = "Do-nothing: forward all data unchanged"
    #: Needs ``rx`` text that maps 1:1 to bytes (decode with latin-1).
    byte_oriented: ClassVar[bool] = False
    #: Useless without local echo, so the chain asks for it.
    forces_echo: ClassVar[bool] = False

    def __init__(self, ctx: FilterContext | None = None) -> None:
        self.ctx = ctx or FilterContext()

    def rx(self, text: str) -> str:
        return text

    def tx(self, text: str) -> str:
        return text

    def echo(self, text: str) -> str:
        return text

    def flush_rx(self) -> str:
        """Release rx text held back while waiting for more input."""
        return ""

    def start(self) -> None:
        """Acquire resources when the monitor starts, not at construction."""

    def close(self) -> None:
        pass


class CRLF(Transform):
    """Enter sends CR+LF; received CR+LF becomes one newline."""

    name = "CRLF"
    _pending_cr = False

    def tx(self, text: str) -> str:
        return text.replace("\n", "\r\n")

    def rx(self, text: str) -> str:
        # A CR at a chunk end may be the first half of CR+LF: hold it back.
        if self._pending_cr:
            text = "\r" + text
            self._pending_cr = False
        if text.endswith("\r"):
            self._pending_cr = True
            text = text[:-1]
        return text.replace("\r\n", "\n")

    def flush_rx(self) -> str:
        if self._pending_cr:
            self._pending_cr = False
            return "\r"
        return ""


class CR(Transform):
    """Enter sends CR; received CR becomes a newline."""

    name = "CR"

    def tx(self, text: str) -> str:
        return text.replace("\n", "\r")

    def rx(self, text: str) -> str:
        return text.replace("\r", "\n")


class LF(Transform):
    """Enter sends LF, the terminal's native newline."""

    name = "LF"


EOL_TRANSFORMS: dict[str, type[Transform]] = {"CRLF": CRLF, "CR": CR, "LF": LF}


def normalize_eol(eol: str) -> str:
    mode = eol.strip().upper()
    if mode not in EOL_TRANSFORMS:
        raise ValueError(f"unknown EOL mode {eol!r}; expected one of {', '.join(EOL_MODES)}")
    return mode


def next_eol(eol: str) -> str:
    """The EOL mode after ``eol``, for the menu's cycle-EOL key."""
    modes = list(EOL_MODES)
    return modes[(modes.index(normalize_eol(eol)) + 1) % len(modes)]


@dataclass
class FilterContext:
    """Everything a filter may need from outside, injected to keep filters pure."""

    eol: str = "CRLF"
    clock: Clock = datetime.now
    log_dir: Path | None = None
    log_opener: LogOpener | None = None
    log_file: TextIO | None = None
    note: NoteSink = field(default=lambda _text: None)


FILTERS: dict[str, type[Transform]] = {}


def register_filter(cls: type[Transform]) -> type[Transform]:
    """Make a filter selectable by its ``name`` (also usable for plugins)."""
    FILTERS[cls.name] = cls
    return cls


register_filter(Transform)


def _visible(codes: Iterable[int]) -> dict[int, int]:
    # C0 control n has a visible "symbol for" glyph at U+2400 + n.
    table = {code: 0x2400 + code for code in codes}
    table.update({0x7F: 0x2421, 0x9B: 0x2425})  # DEL, CSI
    return table


@register_filter
class NoTerminal(Transform):
    """Stops device output from driving the terminal; keeps line structure."""

    name = "default"
    description = "Remove typical terminal control codes from input"
    TABLE: ClassVar[dict[int, int]] = _visible(c for c in range(32) if chr(c) not in "\r\n\b\t")

    def rx(self, text: str) -> str:
        return text.translate(self.TABLE)

    def echo(self, text: str) -> str:
        return self.rx(text)


@register_filter
class NoControls(NoTerminal):
    """Shows every control code (and spaces) so framing bugs become visible."""

    name = "nocontrol"
    description = "Remove all control codes, incl. CR+LF"
    TABLE: ClassVar[dict[int, int]] = {**_visible(range(32)), 0x20: 0x2423}


@register_filter
class Printable(Transform):
    """Makes binary noise readable: non-ASCII as subscript decimal codes."""

    name = "printable"
    description = "Show decimal code for all non-ASCII characters and replace most control codes"

    def rx(self, text: str) -> str:
        out: list[str] = []
        for ch in text:
            if " " <= ch < "\x7f" or ch in "\r\n\b\t":
                out.append(ch)
            elif ch < " ":
                out.append(chr(0x2400 + ord(ch)))
            else:
                out.append("".join(chr(0x2080 + int(d)) for d in str(ord(ch))) + " ")
        return "".join(out)

    def echo(self, text: str) -> str:
        return self.rx(text)


@register_filter
class Colorize(Transform):
    """Tells device output and local echo apart at a glance."""

    name = "colorize"
    description = "Apply different colors for received and echo"
    RX_COLOR: ClassVar[str] = "\x1b[37m"
    ECHO_COLOR: ClassVar[str] = "\x1b[31m"

    def rx(self, text: str) -> str:
        return self.RX_COLOR + text

    def echo(self, text: str) -> str:
        return self.ECHO_COLOR + text


@register_filter
class Debug(Transform):
    """Reports the exact strings crossing the filter, as side notes."""

    name = "debug"
    description = "Print what is sent and received"

    def rx(self, text: str) -> str:
        self.ctx.note(f" [RX:{text!r}] ")
        return text

    def tx(self, text: str) -> str:
        self.ctx.note(f" [TX:{text!r}] ")
        return text


@register_filter
class Timestamp(Transform):
    """Timestamps lines by when their first character arrived."""

    name = "time"
    description = "Add timestamp with milliseconds for each new line"

    _at_line_start = True

    def rx(self, text: str) -> str:
        prefix = ""  # one clock reading per chunk, taken only if needed
        out: list[str] = []
        parts = text.split("\n")
        for i, part in enumerate(parts):
            segment = part + "\n" if i < len(parts) - 1 else part
            if not segment:
                continue
            if self._at_line_start:
                if not prefix:
                    prefix = self.ctx.clock().strftime("%H:%M:%S.%f")[:-3] + " > "
                out.append(prefix)
            out.append(segment)
            self._at_line_start = segment.endswith("\n")
        return "".join(out)


@register_filter
class SendOnEnter(Transform):
    """Lets the user edit a whole line before the device sees any of it."""

    name = "send_on_enter"
    description = "Send a text to device on ENTER"
    forces_echo = True

    def __init__(self, ctx: FilterContext | None = None) -> None:
        super().__init__(ctx)
        # tx runs after the EOL transform, so Enter already looks like this:
        self._eol = {"CRLF": "\r\n", "CR": "\r", "LF": "\n"}[normalize_eol(self.ctx.eol)]
        self.pending = ""  # typed, not yet sent
        self._erased: list[bool] = []  # per backspace in the last tx: did it erase?

    def tx(self, text: str) -> str:
        ready: list[str] = []
        self._erased = []
        for ch in text:
            if ch in "\b\x7f":
                self._erased.append(bool(self.pending))
                self.pending = self.pending[:-1]
                continue
            self.pending += ch
            if self.pending.endswith(self._eol):
                ready.append(self.pending)
                self.pending = ""
        return "".join(ready)

    def echo(self, text: str) -> str:
        # Backspace only edits the unsent line, so erase on screen only if it did.
        erased = iter(self._erased)
        return "".join(
            ("\b \b" if next(erased, False) else "") if ch in "\b\x7f" else ch for ch in text
        )


@register_filter
class Hexlify(Transform):
    """Hex dump for binary protocols, 16 bytes per line with an offset."""

    name = "hexlify"
    description = "Show a hexadecimal representation of the data (code point for each character)"
    byte_oriented = True

    _offset = 0

    def rx(self, text: str) -> str:
        out: list[str] = []
        for ch in text:
            if self._offset % 16 == 0:
                out.append(f"\n{self._offset:04X} | ")
            code = ord(ch)
            out.append(f"{code:02X} " if code <= 0xFF else "?? ")
            self._offset += 1
        return "".join(out)


def _open_log(path: Path) -> TextIO:
    return open(path, "w", encoding="utf-8", newline="")


@register_filter
class LogToFile(Transform):
    """Keeps a copy of the session; sees rx text as filtered so far."""

    name = "log2file"
    description = 'Log data to a file "platformio-device-monitor-*.log" in the project directory'

    def __init__(self, ctx: FilterContext | None = None) -> None:
        super().__init__(ctx)
        self._fp = self.ctx.log_file  # an injected file stays open: the caller owns it
        self._owns_fp = False
        self._closed = False
        self.path: Path | None = None

    def start(self) -> None:
        if self._fp is not None or self._closed:
            return
        log_dir = self.ctx.log_dir if self.ctx.log_dir is not None else Path.cwd()
        self.path = log_dir / self.ctx.clock().strftime(LOG_FILENAME_FORMAT)
        self._fp = (self.ctx.log_opener or _open_log)(self.path)
        self._owns_fp = True
        self.ctx.note(f"--- Logging an output to {self.path}\n")

    def rx(self, text: str) -> str:
        self.start()
        if self._fp is not None:
            self._fp.write(text)
            self._fp.flush()
        return text

    def close(self) -> None:
        if self._fp is not None and self._owns_fp:
            self._fp.close()
        self._fp = None
        self._closed = True  # late rx after shutdown must not open a new file


def available_filters() -> list[str]:
    return sorted(FILTERS)


def parse_filter_names(names: Iterable[str]) -> list[str]:
    """Accept ``-f a -f b``, ``"a, b"`` and ini-style lists alike."""
    out: list[str] = []
    for name in names:
        out.extend(part.lower() for part in name.replace(",", " ").split())
    return out


class FilterChain:
    """Applies filters in PlatformIO's order and collects their side notes.

    Besides text-level ``rx``/``tx``/``echo`` it offers byte-level helpers that
    own the codecs, so multi-byte characters split across reads survive; rx
    decodes as latin-1 when a byte-oriented filter (``hexlify``) needs exactly
    one character per byte.
    """

    def __init__(
        self,
        names: list[str],
        eol: str = "CRLF",
        ctx: FilterContext | None = None,
        *,
        encoding: str = "utf-8",
    ) -> None:
        self.eol = normalize_eol(eol)
        self.names = parse_filter_names(names) or ["default"]
        unknown = [n for n in self.names if n not in FILTERS]
        if unknown:
            raise ValueError(
                f"unknown monitor filter {unknown[0]!r}; "
                f"available filters: {', '.join(available_filters())}"
            )
        self._notes: list[str] = []
        ctx = replace(ctx or FilterContext(), eol=self.eol, note=self._notes.append)
        filters = [FILTERS[n](ctx) for n in reversed(self.names)]
        self.transforms: list[Transform] = [EOL_TRANSFORMS[self.eol](ctx), *filters]
        self.wants_echo = any(t.forces_echo for t in self.transforms)
        byte_oriented = any(t.byte_oriented for t in self.transforms)
        self.encoding = encoding
        self._rx_codec = Codec("latin-1" if byte_oriented else encoding)
        self._tx_codec = Codec(encoding)

    def rx(self, text: str) -> str:
        if not text:
            return ""
        for t in reversed(self.transforms):
            text = t.rx(text)
        return text

    def tx(self, text: str) -> str:
        for t in self.transforms:
            text = t.tx(text)
        return text

    def echo(self, text: str) -> str:
        for t in self.transforms:
            text = t.echo(text)
        return text

    def decode_rx(self, data: bytes) -> str:
        """Device bytes -> screen text."""
        return self.rx(self._rx_codec.decode(data))

    def encode_tx(self, text: str) -> bytes:
        """Typed text -> device bytes (empty while e.g. ``send_on_enter`` buffers)."""
        return self._tx_codec.encode(self.tx(text))

    def encode_literal(self, text: str) -> bytes:
        """Bypass filters: the menu's "send the menu/exit character itself"."""
        return self._tx_codec.encode(text)

    def flush_rx(self) -> str:
        """Release text held back by the codec or filters (e.g. at exit)."""
        carry = self._rx_codec.flush()
        for t in reversed(self.transforms):
            if carry:
                carry = t.rx(carry)
            carry += t.flush_rx()
        return carry

    def take_notes(self) -> list[str]:
        """Messages for stderr (debug traces, log file name); cleared on read."""
        notes, self._notes[:] = list(self._notes), []
        return notes

    def start(self) -> None:
        for t in self.transforms:
            t.start()

    def close(self) -> None:
        for t in self.transforms:
            t.close()


def build_chain(
    names: Iterable[str],
    eol: str = "CRLF",
    *,
    clock: Clock = datetime.now,
    log_dir: Path | None = None,
    log_opener: LogOpener | None = None,
    log_file: TextIO | None = None,
    encoding: str = "utf-8",
    raw: bool = False,
) -> FilterChain | None:
    """Build the filter chain, or ``None`` in raw mode.

    Raw mode bypasses filters, EOL handling and decoding in both directions:
    the I/O layer writes device bytes to the screen unchanged and sends typed
    keys encoded as they are. Names are still validated so typos are not
    silently ignored.
    """
    ctx = FilterContext(clock=clock, log_dir=log_dir, log_opener=log_opener, log_file=log_file)
    chain = FilterChain(list(names), eol, ctx, encoding=encoding)
    return None if raw else chain
