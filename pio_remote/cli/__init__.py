"""The `pio-remote` command line: PlatformIO's `pio remote` grammar over pio_remote.client.api.

Each command group lives in its own module and is imported only when it runs
(see ``lazy.py``); errors every command can meet are handled in ``common.py``.
"""

from __future__ import annotations

import os
import shlex
import sys

import click

from pio_remote.cli.common import EXIT_ERROR, EXIT_INTERRUPTED, Options, fail, handle
from pio_remote.cli.lazy import LazyGroup
from pio_remote.version import version_text

COMMANDS = {
    "account": "pio_remote.cli.account_cmds:account",
    "agent": "pio_remote.cli.agent_cmds:agent",
    "device": "pio_remote.cli.device_cmds:device",
    "quickstart": "pio_remote.cli.quickstart:quickstart",
    "relay": "pio_remote.cli.relay_cmds:relay_group",
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
@click.version_option(version_text(), prog_name="pio-remote")
@click.pass_context
def cli(ctx: click.Context, agents: tuple[str, ...]) -> None:
    """Work with boards plugged into another machine, end to end encrypted."""
    ctx.obj = Options(agents=list(agents))


def _misplaced_agent(exc: click.UsageError) -> str:
    """`device list -a lab-pi`: -a belongs to pio-remote itself, before the command."""
    if not isinstance(exc, click.NoSuchOption) or exc.ctx is None or exc.ctx.parent is None:
        return ""
    if exc.option_name not in ("-a", "--agent"):
        return ""
    path = exc.ctx.command_path
    if path.split()[1:2] not in (["device"], ["run"], ["test"], ["update"]):
        return (
            f"'{path}' has no option '{exc.option_name}': -a/--agent chooses the agent of "
            "the device, run, test and update commands"
        )
    args = sys.argv[1:]
    moved: list[str] = []
    for i, arg in enumerate(args):
        if arg in ("-a", "--agent") and i + 1 < len(args):
            moved = ["-a", args[i + 1], *args[:i], *args[i + 2 :]]
            break
        if arg.startswith("--agent="):
            moved = ["-a", arg.removeprefix("--agent="), *args[:i], *args[i + 1 :]]
            break
    example = f": 'pio-remote {shlex.join(moved)}'" if moved else ""
    return (
        f"'{path}' has no option '{exc.option_name}': -a/--agent goes before the command{example}"
    )


def main() -> None:
    """Entry point: every error, usage errors included, is one line on stderr (common.py)."""
    try:
        code = cli.main(prog_name="pio-remote", standalone_mode=False)
    except click.UsageError as exc:
        if getattr(exc, "ctx", None) and type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # a group with no command: its help, as click shows it
            sys.exit(exc.exit_code)
        where = exc.ctx.command_path if exc.ctx else "pio-remote"
        message = _misplaced_agent(exc) or exc.format_message()
        fail(f"{message} (see '{where} --help')", exc.exit_code)
    except click.ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
    except click.Abort as exc:
        interrupted = isinstance(exc.__context__, KeyboardInterrupt)
        fail("Aborted.", EXIT_INTERRUPTED if interrupted else EXIT_ERROR)
    except BrokenPipeError:
        # The reader (`| head`) stopped early: nobody is left to tell, and Python's own
        # flush at exit must not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_ERROR)
    except BaseException as exc:
        handle(exc)
        raise
    sys.exit(code if isinstance(code, int) else 0)
