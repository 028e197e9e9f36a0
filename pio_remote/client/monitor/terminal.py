"""Terminal mode of ``device monitor``: miniterm's keys and menu, acting on a remote port.

``termkeys.KeyHandler`` decides what a key means; this module carries it out:
text goes through the tx filters to the device, menu actions become settings
changes on the agent (DTR, RTS, baud...), and prompts (new baud rate, filters,
encoding, a file to send) are read by ``LineEditor`` from the same key stream,
because the terminal stays in character mode for the whole session.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trio

from pio_remote.client.monitor import filters, termkeys
from pio_remote.client.monitor.console import (
    ConsoleOptions,
    Output,
    Screen,
    device_to_screen,
)
from pio_remote.client.monitor.keyboard import Keyboard
from pio_remote.client.monitor.remote import Monitor

# Largest file the menu's "upload file" key sends; it is for scripts and
# config snippets, not firmware (use 'pio-remote run -t upload' for that).
MAX_SEND_FILE = 1024 * 1024


@dataclass
class LineEditor:
    """A one-line prompt read key by key: Enter accepts, Ctrl+C or Esc cancels."""

    prompt: str
    text: str = ""
    done: bool = False
    cancelled: bool = False

    def feed(self, ch: str) -> str:
        """Take one typed character; returns what to draw on the screen."""
        if ch in "\r\n":
            self.done = True
            return "\n"
        if ch in "\x03\x1b":
            self.done = self.cancelled = True
            return " (cancelled)\n"
        if ch in "\b\x7f":
            if not self.text:
                return ""
            self.text = self.text[:-1]
            return "\b \b"
        if ch.isprintable():
            self.text += ch
            return ch
        return ""


class Terminal:
    def __init__(self, mon: Monitor, opts: ConsoleOptions, keyboard: Keyboard) -> None:
        self.mon = mon
        self.keyboard = keyboard
        self.opts = opts
        self.output = Output()
        self.screen = Screen(mon, opts, self.output)
        self.keys = termkeys.KeyHandler(
            opts.exit_char, opts.menu_char, map_cr_to_lf=not opts.raw, map_del_to_bs=not opts.raw
        )
        self.echo = opts.echo or bool(self.screen.chain and self.screen.chain.wants_echo)
        self.eol = filters.normalize_eol(opts.eol)
        self.filter_names = list(opts.filters)
        self.encoding = opts.encoding
        self.codec = filters.Codec("latin-1" if opts.raw else opts.encoding)
        self.break_on = False
        self.prompt: LineEditor | None = None
        self._prompt_action: termkeys.Action | None = None

    async def run(self) -> int:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.output.run)
                nursery.start_soon(device_to_screen, self.mon, self.screen)
                if not self.opts.quiet:
                    await self.output.note(self.keys.banner())
                while data := await self.keyboard.read():
                    if await self.feed(self.codec.decode(data)):
                        break
                nursery.cancel_scope.cancel()
        finally:
            self.screen.close()
        return 0

    async def feed(self, text: str) -> bool:
        """Handle typed text; True when the user asked to leave."""
        pending: list[str] = []
        for ch in text:
            if self.prompt is not None:
                await self._send_text("".join(pending))
                pending.clear()
                await self._prompt_key(ch)
                continue
            for action in self.keys.feed(ch):
                if isinstance(action, termkeys.Send):
                    pending.append(action.text)
                    continue
                await self._send_text("".join(pending))
                pending.clear()
                if isinstance(action, termkeys.Exit):
                    return True
                await self.act(action)
        await self._send_text("".join(pending))
        return False

    async def _send_text(self, text: str) -> None:
        if not text:
            return
        chain = self.screen.chain
        if chain is None:
            await self.mon.send(text.encode("latin-1"))
            return
        await self.mon.send(chain.encode_tx(text))
        if self.echo:
            await self.screen.echo(text)
        await self.screen.flush_notes()

    async def note(self, text: str) -> None:
        await self.output.note(f"--- {text}\n")

    async def act(self, action: termkeys.Action) -> None:
        s = self.mon.settings
        match action:
            case termkeys.SendLiteral(text=text):
                chain = self.screen.chain
                data = text.encode("latin-1") if chain is None else chain.encode_literal(text)
                await self.mon.send(data)
            case termkeys.ShowHelp():
                await self.output.note(self.keys.help_text())
            case termkeys.ShowInfo():
                await self.note(self.info())
            case termkeys.ToggleDTR():
                await self.mon.set(dtr=not (s.dtr is None or s.dtr))
            case termkeys.ToggleRTS():
                await self.mon.set(rts=not (s.rts is None or s.rts))
            case termkeys.ToggleBreak():
                self.break_on = not self.break_on
                await self.mon.set_break(self.break_on)
                await self.note(f"BREAK {'active' if self.break_on else 'inactive'}")
            case termkeys.ToggleEcho():
                self.echo = not self.echo
                await self.note(f"local echo {'active' if self.echo else 'inactive'}")
            case termkeys.CycleEOL():
                self.eol = filters.next_eol(self.eol)
                self._rebuild()
                await self.note(f"EOL: {self.eol}")
            case termkeys.SetDataBits(bits=bits):
                await self.mon.set(bytesize=bits)
            case termkeys.SetParity(parity=parity):
                await self.mon.set(parity=parity)
            case termkeys.SetStopBits(bits=bits):
                await self.mon.set(stopbits=bits)
            case termkeys.SetXonXoff(enabled=on):
                await self.mon.set(xonxoff=on)
            case termkeys.SetRtsCts(enabled=on):
                await self.mon.set(rtscts=on)
            case termkeys.PromptBaud():
                await self._ask(action, "Enter new baudrate: ")
            case termkeys.PromptFilters():
                names = " ".join(filters.available_filters())
                await self.note(f"Available filters: {names}")
                await self._ask(action, "Enter filters (space separated): ")
            case termkeys.PromptEncoding():
                await self._ask(action, f"Enter new encoding name [{self.encoding}]: ")
            case termkeys.PromptUploadFile():
                await self._ask(action, "File to upload: ")
            case termkeys.PromptPort() | termkeys.SuspendPort():
                await self.note(
                    "changing or suspending the port is not available remotely: quit and run "
                    "'pio-remote device monitor -p PORT' again"
                )
            case termkeys.UnknownMenuKey(key=key):
                await self.note(f"unknown menu character {termkeys.key_description(key)}")

    def info(self) -> str:
        s = self.mon.settings
        state = "connected" if self.mon.connected else "reconnecting"
        return (
            f"agent {self.mon.agent} ({state}), port {self.mon.port}: {s.describe()}, "
            f"DTR {_state(s.dtr)}, RTS {_state(s.rts)}, BREAK {_state(self.break_on)} | "
            f"filters: {' '.join(self.filter_names) or 'default'}, EOL {self.eol}, "
            f"encoding {self.encoding}, echo {_state(self.echo)}"
        )

    # ---- prompts ------------------------------------------------------------------------

    async def _ask(self, action: termkeys.Action, prompt: str) -> None:
        self.prompt = LineEditor(prompt)
        self._prompt_action = action
        await self.output.note(f"--- {prompt}")

    async def _prompt_key(self, ch: str) -> None:
        editor = self.prompt
        assert editor is not None
        await self.output.note(editor.feed(ch))
        if not editor.done:
            return
        action, self.prompt, self._prompt_action = self._prompt_action, None, None
        if editor.cancelled or not editor.text.strip():
            return
        answer = editor.text.strip()
        try:
            await self._answer(action, answer)
        except (ValueError, LookupError, OSError) as exc:
            await self.note(f"not changed: {exc}")

    async def _answer(self, action: termkeys.Action | None, answer: str) -> None:
        if isinstance(action, termkeys.PromptBaud):
            await self.mon.set(baudrate=parse_baud(answer))
        elif isinstance(action, termkeys.PromptFilters):
            names = filters.parse_filter_names([answer])
            self._rebuild(names)
            self.filter_names = names
            await self.note(f"filters: {' '.join(names)}")
        elif isinstance(action, termkeys.PromptEncoding):
            self.encoding = filters.Codec(answer).encoding  # LookupError if unknown
            self._rebuild()
            await self.note(f"encoding: {self.encoding}")
        elif isinstance(action, termkeys.PromptUploadFile):
            path = Path(answer).expanduser()
            if path.stat().st_size > MAX_SEND_FILE:
                raise ValueError(f"{path} is larger than {MAX_SEND_FILE // 1024} KiB")
            data = path.read_bytes()
            await self.mon.send(data)
            await self.note(f"sent {len(data)} bytes from {path}")

    def _rebuild(self, names: list[str] | None = None) -> None:
        """New filter chain after an EOL, filter or encoding change (validates first)."""
        if self.opts.raw:
            return
        self.opts.encoding = self.encoding
        chain = self.screen.build_chain(names if names is not None else self.filter_names, self.eol)
        old, self.screen.chain = self.screen.chain, chain
        if old is not None:
            old.close()
        if not self.opts.raw:
            self.codec = filters.Codec(self.encoding)


def parse_baud(text: str) -> int:
    """The baud prompt's answer; a clear message instead of int()'s for a typo."""
    if not text.isdigit():
        raise ValueError(f"baud rate must be a whole number like 115200, not {text!r}")
    return int(text)


def _state(value: bool | None) -> str:
    return "default" if value is None else ("active" if value else "inactive")


async def run_terminal(mon: Monitor, opts: ConsoleOptions, keyboard: Keyboard) -> int:
    return await Terminal(mon, opts, keyboard).run()
