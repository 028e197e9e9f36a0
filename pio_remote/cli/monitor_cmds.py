"""`pio-remote device monitor`: a remote serial port, here.

`monitor` takes `pio device monitor`'s options with PlatformIO's meanings and
defaults, and reads `monitor_*` from platformio.ini (`-d`, `-e`); an option
given on the command line wins over the ini, which wins over the default.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click
import trio
from click.core import ParameterSource

from pio_remote.cli.common import PORT_HELP, Options, run, stop_signals
from pio_remote.client.monitor import filters
from pio_remote.client.monitor import options as monitor_options
from pio_remote.client.monitor.console import ConsoleOptions, run_pipe
from pio_remote.client.monitor.keyboard import open_keyboard
from pio_remote.client.monitor.remote import open_monitor
from pio_remote.client.monitor.terminal import run_terminal
from pio_remote.wire.serial_events import PARITIES, SerialSettings


@click.command("monitor")
@click.option("-p", "--port", help=PORT_HELP)
@click.option("-b", "--baud", type=int, default=9600, show_default=True, help="Baud rate.")
@click.option(
    "--parity",
    type=click.Choice(PARITIES),
    default="N",
    show_default=True,
    help="Parity: N (none), E (even), O (odd), S (space), M (mark).",
)
@click.option("--rtscts", is_flag=True, help="Enable RTS/CTS flow control.")
@click.option("--xonxoff", is_flag=True, help="Enable software flow control.")
@click.option("--rts", type=click.IntRange(0, 1), help="Set initial RTS line state.")
@click.option("--dtr", type=click.IntRange(0, 1), help="Set initial DTR line state.")
@click.option("--echo", is_flag=True, help="Enable local echo.")
@click.option("--encoding", default="UTF-8", show_default=True, help="Encoding of the device.")
@click.option("-f", "--filter", "filter_names", multiple=True, help="Apply a filter (repeatable).")
@click.option(
    "--eol",
    type=click.Choice(["CR", "LF", "CRLF"]),
    default="CRLF",
    show_default=True,
    help="End of line mode.",
)
@click.option("--raw", is_flag=True, help="Do not apply any encodings or transformations.")
@click.option(
    "--exit-char",
    type=int,
    default=3,
    show_default=True,
    help="ASCII code of the character that exits the monitor (Ctrl+C).",
)
@click.option(
    "--menu-char",
    type=int,
    default=20,
    show_default=True,
    help="ASCII code of the menu character (Ctrl+T).",
)
@click.option("--quiet", is_flag=True, help="Diagnostics: suppress non-error messages.")
@click.option(
    "--no-reconnect", is_flag=True, help="Exit when the connection is lost instead of reconnecting."
)
@click.option(
    "--eof-linger",
    type=click.FloatRange(0, 60),
    default=0.5,
    show_default=True,
    metavar="SECONDS",
    help="Pipe mode: after end of input, exit once the device was quiet this long.",
)
@click.option(
    "-d",
    "--project-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    help="PlatformIO project whose platformio.ini to read.",
)
@click.option("-e", "--environment", help="Environment in platformio.ini to take monitor_* from.")
@click.pass_context
def monitor(ctx: click.Context, **kw: Any) -> None:
    """Remote serial monitor: stdin and stdout become the board's serial port."""
    opts: Options = ctx.obj
    kw = _with_project(ctx, kw)
    try:
        settings = SerialSettings(
            baudrate=kw["baud"],
            parity=kw["parity"].upper(),
            rtscts=kw["rtscts"],
            xonxoff=kw["xonxoff"],
            dtr=None if kw["dtr"] is None else bool(kw["dtr"]),
            rts=None if kw["rts"] is None else bool(kw["rts"]),
        )
        filters.build_chain(kw["filter_names"], kw["eol"], encoding=kw["encoding"])
    except (ValueError, LookupError) as exc:
        raise click.UsageError(str(exc)) from None
    if kw["exit_char"] == kw["menu_char"]:
        raise click.UsageError("--exit-char can not be the same as --menu-char")
    console = ConsoleOptions(
        filters=list(kw["filter_names"]),
        eol=kw["eol"].upper(),
        raw=kw["raw"],
        echo=kw["echo"],
        encoding=kw["encoding"],
        exit_char=kw["exit_char"],
        menu_char=kw["menu_char"],
        quiet=kw["quiet"],
        eof_linger=kw["eof_linger"],
        log_dir=kw["project_dir"],
    )
    target = _Target(opts.agents, kw["port"])
    main = _monitor_main(target, settings, not kw["no_reconnect"], console, sys.stdin.isatty())
    sys.exit(run(main))


def _with_project(ctx: click.Context, kw: dict[str, Any]) -> dict[str, Any]:
    """Fill options the user did not give from platformio.ini's monitor_* values."""
    try:
        project = monitor_options.read_project(kw["project_dir"], kw["environment"])
    except monitor_options.ProjectError as exc:
        raise click.ClickException(str(exc)) from None
    if project is None:
        return kw
    from_ini = {
        "port": project.port,
        "baud": project.speed,
        "parity": project.parity,
        "filter_names": tuple(project.filters) or None,
        "rts": None if project.rts is None else int(project.rts),
        "dtr": None if project.dtr is None else int(project.dtr),
        "eol": project.eol,
        "raw": project.raw,
        "echo": project.echo,
        "encoding": project.encoding,
    }
    out = dict(kw)
    for name, value in from_ini.items():
        if value is not None and ctx.get_parameter_source(name) is ParameterSource.DEFAULT:
            out[name] = value
    return out


class _Target:
    """The agent and port a monitor opens, chosen on its own first connection if need be."""

    def __init__(self, agents: list[str], wanted: str | None) -> None:
        self.agents = agents
        self.wanted = wanted

    def open_args(self) -> dict[str, Any]:
        """``open_monitor``'s agent, port and the choosers it still needs."""
        agent = self.agents[0] if len(self.agents) == 1 else ""
        literal = bool(self.wanted) and not monitor_options.is_glob(self.wanted or "")
        return {
            "agent": agent,
            "port": self.wanted or "",
            "choose_agent": None if agent else self.choose_agent,
            "choose_port": None if literal else self.choose_port,
        }

    def choose_agent(self, online: list[str]) -> str:
        return monitor_options.choose_agent(self.agents, online)

    def choose_port(self, agent: str, devices: list[dict[str, Any]]) -> str:
        return monitor_options.choose_port(devices, self.wanted, agent)


def _monitor_main(
    target: _Target,
    settings: SerialSettings,
    reconnect: bool,
    console: ConsoleOptions,
    terminal: bool,
) -> Callable[[], Awaitable[int]]:
    """The whole monitor under one signal receiver, installed before anything else.

    SIGINT, SIGTERM and SIGHUP (an ssh drop) at any moment, connecting included,
    cancel the monitor, so every ``finally`` runs (the terminal is restored, the
    session closed) and the exit status is 128 + the signal, with no traceback.
    The keyboard (terminal mode) is opened before connecting, so that keys typed
    meanwhile wait for the session instead of echoing.
    """

    async def main() -> int:
        code = 0
        choice: monitor_options.ChoiceError | None = None
        with trio.open_signal_receiver(*stop_signals()) as signals:
            async with trio.open_nursery() as nursery:

                async def on_signal() -> None:
                    nonlocal code
                    async for signum in signals:
                        code = 128 + signum
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(on_signal)
                keys = open_keyboard(console.raw) if terminal else contextlib.nullcontext()
                with keys as keyboard:
                    try:
                        args = target.open_args()
                        async with open_monitor(
                            settings=settings, reconnect=reconnect, **args
                        ) as mon:
                            if keyboard is None:
                                code = await run_pipe(mon, console)
                            else:
                                code = await run_terminal(mon, console, keyboard)
                    except monitor_options.ChoiceError as exc:
                        choice = exc
                nursery.cancel_scope.cancel()
        if choice is not None:
            raise choice  # one line and exit 2 (cli/common.py ERRORS)
        return code

    return main
