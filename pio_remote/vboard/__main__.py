"""Command line for the virtual board farm: ``python -m pio_remote.vboard start|upload``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .client import UploadError, upload_firmware
from .host import DEFAULT_FIRMWARE


@click.group()
def main() -> None:
    """Emulated LM3S6965 boards on ptys: try pio-remote without hardware."""


@main.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/tmp/vb"),
    show_default=True,
    help="Where the board symlinks (boardK) are created.",
)
@click.option(
    "--count", type=click.IntRange(1, 64), default=1, show_default=True, help="Number of boards."
)
@click.option(
    "--firmware",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=DEFAULT_FIRMWARE,
    show_default=True,
    help="Initial firmware flashed onto every board.",
)
@click.option(
    "--gdb-port",
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Serve QEMU's gdbstub: board K on 127.0.0.1:PORT+K (see docs/debugging.md).",
)
@click.option(
    "--gdb-wait",
    is_flag=True,
    help="With --gdb-port: every boot waits at the reset vector until gdb continues.",
)
@click.option("--verbose", "-v", is_flag=True, help="Log resets and QEMU exits to stderr.")
@click.option(
    "--exit-on-stdin-eof",
    is_flag=True,
    hidden=True,
    help="Stop when stdin closes (used when a parent process supervises us).",
)
def start(
    directory: Path,
    count: int,
    firmware: Path,
    gdb_port: int | None,
    gdb_wait: bool,
    verbose: bool,
    exit_on_stdin_eof: bool,
) -> None:
    """Run COUNT boards in the foreground until SIGINT/SIGTERM.

    Prints "boardK DIR/boardK -> /dev/pts/N" per board (and "boardK gdb HOST:PORT"
    with --gdb-port), then "ready". Opening a board's port resets it, so the opener
    sees the boot banner.
    """
    import trio  # only the farm needs it: `upload` starts faster without

    from .board import FarmError, GdbStub, run_farm

    if gdb_wait and gdb_port is None:
        raise click.UsageError("--gdb-wait needs --gdb-port")
    gdb = GdbStub(gdb_port, gdb_wait) if gdb_port is not None else None
    try:
        trio.run(
            lambda: run_farm(
                directory,
                count,
                firmware,
                verbose=verbose,
                watch_stdin=exit_on_stdin_eof,
                gdb=gdb,
            )
        )
    except FarmError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.argument("port")
@click.argument("firmware", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--timeout",
    type=float,
    default=15.0,
    show_default=True,
    help="Seconds to wait for the board to reboot.",
)
def upload(port: str, firmware: Path, timeout: float) -> None:
    """Flash FIRMWARE (an ARM ELF executable) onto the board at PORT and reset it.

    PORT is the board symlink (e.g. /tmp/vb/board0) or its /dev/pts/N node.
    """
    try:
        upload_firmware(port, firmware, timeout=timeout, log=click.echo)
    except UploadError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main(prog_name="python -m pio_remote.vboard")
