"""The two front ends of ``pio-remote device monitor``: a terminal and a pipe.

Terminal mode (stdin is a tty) behaves like miniterm: keys go through
``termkeys`` (exit and menu characters), text through the tx filters, and the
menu changes the remote port (baud, DTR, RTS...). Pipe mode (stdin is not a
tty) is for scripts: stdin is data, not keys (no menu, no exit character), and
end of input ends the session once the device has been quiet for
``eof_linger`` seconds, so ``printf 'hi\\n' | pio-remote device monitor`` shows
the reply. Device output goes to stdout; everything else (notices, warnings,
filter notes) goes to stderr prefixed with ``---``, so stdout stays the
device's bytes.

stdin is read and stdout written in worker threads: the terminal's file
description is shared with the shell, so it is never switched to non-blocking.
Terminal mode's keys come from ``keyboard`` (termios or msvcrt, opened only there).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import trio

from pio_remote.client.monitor import filters, termkeys
from pio_remote.client.monitor.items import (
    ConnectionLost,
    InputDropped,
    Item,
    OutputMissing,
    Reconnected,
    ResumeLost,
)
from pio_remote.client.monitor.remote import Monitor
from pio_remote.wire import serial_events as ev

STDIN_READ = 64 * 1024
# Output chunks queued for the writer thread; a stalled stdout fills this and
# then stops the monitor reading, which is backpressure to the device.
OUTPUT_QUEUE = 8
# Pipe mode: never linger longer than this after end of input, however chatty
# the device (a larger --eof-linger raises the cap to itself).
EOF_LINGER_CAP = 5.0


@dataclass
class ConsoleOptions:
    filters: list[str] = field(default_factory=list)
    eol: str = "CRLF"
    raw: bool = False
    echo: bool = False
    encoding: str = "utf-8"
    exit_char: int = termkeys.DEFAULT_EXIT_CHAR
    menu_char: int = termkeys.DEFAULT_MENU_CHAR
    quiet: bool = False
    eof_linger: float = 0.5
    log_dir: Path | None = None


class Output:
    """Ordered writes to stdout/stderr from a worker thread; bounded."""

    def __init__(self) -> None:
        self._send, self._recv = trio.open_memory_channel[tuple[int, bytes]](OUTPUT_QUEUE)
        self.broken = trio.Event()  # stdout's reader went away (EPIPE)

    async def out(self, data: bytes) -> None:
        if data:
            await self._send.send((1, data))

    async def note(self, text: str) -> None:
        await self._send.send((2, text.encode("utf-8", "replace")))

    async def run(self) -> None:
        while True:
            fd, data = await self._recv.receive()
            parts = [data]
            while True:  # join what queued up meanwhile, if it goes to the same place
                try:
                    nxt = self._recv.receive_nowait()
                except trio.WouldBlock:
                    break
                if nxt[0] != fd:
                    await self._write(fd, b"".join(parts))
                    fd, parts = nxt[0], []
                parts.append(nxt[1])
            await self._write(fd, b"".join(parts))

    async def drained(self, timeout: float = 2.0) -> None:
        """Wait (bounded) until everything queued was handed to the writer thread."""
        with trio.move_on_after(timeout):
            while self._recv.statistics().current_buffer_used:
                await trio.sleep(0.01)
            await trio.sleep(0)

    async def _write(self, fd: int, data: bytes) -> None:
        try:
            await trio.to_thread.run_sync(_write_all, fd, data)
        except BrokenPipeError:
            self.broken.set()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def read_stdin() -> bytes:
    """One chunk of stdin; b"" at end of input. The thread is abandoned on cancel."""
    return await trio.to_thread.run_sync(os.read, 0, STDIN_READ, abandon_on_cancel=True)


class Screen:
    """Device bytes -> what the user sees, and notices -> ``---`` lines."""

    def __init__(self, mon: Monitor, opts: ConsoleOptions, output: Output) -> None:
        self.mon = mon
        self.opts = opts
        self.output = output
        self.chain = self.build_chain(opts.filters, opts.eol)
        self.last_output = trio.current_time()
        self._greeted = False  # the "Terminal on" line is shown once, not on every reconnect
        self._last_loss = ""  # reconnect attempts failing the same way are shown once

    def build_chain(self, names: list[str], eol: str) -> filters.FilterChain | None:
        chain = filters.build_chain(
            names, eol, encoding=self.opts.encoding, raw=self.opts.raw, log_dir=self.opts.log_dir
        )
        if chain is not None:
            chain.start()
        return chain

    async def show(self, item: Item) -> None:
        if isinstance(item, bytes):
            self.last_output = trio.current_time()
            if self.chain is None:
                await self.output.out(item)
            else:
                await self.output.out(self._encode(self.chain.decode_rx(item)))
                await self.flush_notes()
            return
        text = self.describe(item)
        if text:
            await self.output.note(f"--- {text}\n")

    async def echo(self, text: str) -> None:
        if self.chain is not None:
            await self.output.out(self._encode(self.chain.echo(text)))

    async def flush_notes(self) -> None:
        if self.chain is not None:
            for note in self.chain.take_notes():
                await self.output.note(note)

    def _encode(self, text: str) -> bytes:
        return text.encode("utf-8", "replace")

    def describe(self, item: Item) -> str:
        port, quiet = self.mon.port, self.opts.quiet
        match item:
            case ev.Opened(resumed=True):
                return f"{port} is back, monitoring again"
            case ev.Opened(settings=settings):
                if quiet or self._greeted:
                    return ""
                self._greeted = True
                return f"Terminal on {self.mon.agent}:{port} | {settings.describe()}"
            case ev.Lost(reason=reason):
                return f"{port} disconnected ({reason}); waiting for it to come back"
            case ev.Paused(holder=holder):
                return f"{port} paused: {holder}; it resumes when that is done"
            case ev.Applied(settings=settings):
                return "" if quiet else f"Settings: {settings.describe()}{_lines(settings)}"
            case ev.AgentWarning(message=message):
                return f"warning: {message}"
            case ConnectionLost(reason=reason, retry_in=delay):
                if reason == self._last_loss:
                    return ""
                self._last_loss = reason
                return f"connection lost: {reason}; reconnecting (next try in {delay:.1f} s)"
            case Reconnected(agent=agent):
                self._last_loss = ""
                return f"reconnected to agent {agent}"
            case OutputMissing(count=count):
                return (
                    f"{count} byte(s) of output were lost while disconnected: the agent's "
                    "buffer overflowed (monitor_ring_bytes in its agent.toml sets its size)"
                )
            case ResumeLost(reason=reason):
                return reason
            case InputDropped(count=count):
                return f"{count} byte(s) typed while disconnected were dropped, not sent"
        return ""

    def close(self) -> None:
        if self.chain is not None:
            self.chain.close()


def _lines(settings: ev.SerialSettings) -> str:
    def state(value: bool | None) -> str:
        return "default" if value is None else ("active" if value else "inactive")

    return f", DTR {state(settings.dtr)}, RTS {state(settings.rts)}"


async def device_to_screen(mon: Monitor, screen: Screen) -> None:
    while (item := await mon.receive()) is not None:
        await screen.show(item)


# ---- pipe mode ------------------------------------------------------------------------


async def run_pipe(mon: Monitor, opts: ConsoleOptions) -> int:
    """stdin -> device, device -> stdout; end of input ends it after a quiet spell."""
    output = Output()
    screen = Screen(mon, opts, output)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(output.run)
            nursery.start_soon(device_to_screen, mon, screen)
            nursery.start_soon(_stop_when, output.broken, nursery.cancel_scope)
            codec = filters.Codec(opts.encoding)
            while data := await read_stdin():
                if screen.chain is None:
                    await mon.send(data)
                    continue
                text = codec.decode(data)
                await mon.send(screen.chain.encode_tx(text))
                if opts.echo or screen.chain.wants_echo:
                    await screen.echo(text)
            await mon.send_eof()
            await mon.eof_sent.wait()
            await _linger(screen, opts.eof_linger)
            await output.drained()
            nursery.cancel_scope.cancel()
    finally:
        screen.close()
    return 0


async def _stop_when(event: trio.Event, scope: trio.CancelScope) -> None:
    """stdout's reader went away (``| head``): nobody is listening, so end quietly."""
    await event.wait()
    scope.cancel()


async def _linger(screen: Screen, quiet: float) -> None:
    """Wait until the device has said nothing for ``quiet`` s (capped)."""
    start = trio.current_time()
    cap = max(EOF_LINGER_CAP, quiet)
    while True:
        now = trio.current_time()
        silent = now - max(screen.last_output, start)
        if silent >= quiet or now - start >= cap:
            return
        await trio.sleep(min(quiet - silent, cap - (now - start)))
