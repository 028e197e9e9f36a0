"""The `pio-remote` command line: PlatformIO's `pio remote` grammar over pio_remote.client."""

from __future__ import annotations

import click

from pio_remote import __version__, onefile
from pio_remote.cli import lease_cmds as _lease_cmds  # noqa: F401  (device lock, unlock)
from pio_remote.cli import monitor_cmds as _monitor_cmds  # noqa: F401  (device monitor, forward)
from pio_remote.cli.account_cmds import account
from pio_remote.cli.agent_cmds import agent
from pio_remote.cli.common import Options
from pio_remote.cli.device_cmds import device
from pio_remote.cli.quickstart import quickstart
from pio_remote.cli.run_cmds import run_cmd
from pio_remote.cli.test_cmds import test_cmd
from pio_remote.cli.update_cmds import update_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


cli.add_command(account)
cli.add_command(agent)
cli.add_command(device)
cli.add_command(quickstart)
cli.add_command(run_cmd)
cli.add_command(test_cmd)
cli.add_command(update_cmd)


def _mount_relay() -> None:
    from relay.cli import relay_group

    cli.add_command(relay_group, "relay")


_mount_relay()


def main() -> None:
    cli(prog_name="pio-remote")
