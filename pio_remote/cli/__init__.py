"""The `pio-remote` command line: PlatformIO's `pio remote` grammar over pio_remote.client.

Each command group lives in its own module and is imported only when it runs
(see ``lazy.py``); errors every command can meet are handled in ``common.py``.
"""

from __future__ import annotations

import click

from pio_remote import __version__, onefile
from pio_remote.cli.common import Options, handle
from pio_remote.cli.lazy import LazyGroup

COMMANDS = {
    "account": "pio_remote.cli.account_cmds:account",
    "agent": "pio_remote.cli.agent_cmds:agent",
    "device": "pio_remote.cli.device_cmds:device",
    "quickstart": "pio_remote.cli.quickstart:quickstart",
    "relay": "relay.cli:relay_group",
    "run": "pio_remote.cli.run_cmds:run_cmd",
    "test": "pio_remote.cli.test_cmds:test_cmd",
    "update": "pio_remote.cli.update_cmds:update_cmd",
}


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "-a",
    "--agent",
    "agents",
    multiple=True,
    metavar="AGENT",
    help="Target agent name or owner/name (repeatable). Default: every reachable agent.",
)
@click.version_option(onefile.version_text(__version__), prog_name="pio-remote")
@click.pass_context
def cli(ctx: click.Context, agents: tuple[str, ...]) -> None:
    """Work with boards plugged into another machine, end to end encrypted."""
    ctx.obj = Options(agents=list(agents))


def main() -> None:
    """Entry point: click handles usage errors; ours become one line (common.ERRORS)."""
    try:
        cli(prog_name="pio-remote")
    except BaseException as exc:
        handle(exc)
        raise
