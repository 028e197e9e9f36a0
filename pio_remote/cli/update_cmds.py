"""`pio-remote [-a AGENT]... update [--dry-run]`: versions on each agent; update PlatformIO there.

Each agent is its own task; its PlatformIO output streams as it comes, prefixed
with the agent's name when there are several. Exit 1 if any agent failed.
"""

from __future__ import annotations

import sys
from typing import Any

import click
import trio

from pio_remote.cli.common import Options, run
from pio_remote.cli.lines import PrefixedLines
from pio_remote.client.api import Client, RemoteError, wait_result
from pio_remote.client.targets import display_name, resolve_targets
from pio_remote.net.channel import ChannelClosed
from pio_remote.net.link import RelayError


@click.command("update")
@click.option("--dry-run", is_flag=True, help="Only check for new versions")
@click.pass_obj
def update_cmd(opts: Options, dry_run: bool) -> None:
    """Show each agent's versions and update PlatformIO Core packages on it."""
    sys.exit(run(_update, opts, dry_run))


async def _update(opts: Options, dry_run: bool) -> int:
    failed = False
    async with Client.connect() as client:
        agents = await resolve_targets(client, opts.agents)
        if not agents:
            raise RemoteError("no agents online: start one with 'pio-remote agent start'")
        many = len(agents) > 1

        async def one(ref: str) -> None:
            nonlocal failed
            label = display_name(client, ref)
            out = PrefixedLines(f"[{label}] " if many else "")
            try:
                async with client.session(ref) as agent:
                    async with agent.open_call("agent.update", dry_run=dry_run) as call:
                        while call.result is None:
                            item = await call.receive()
                            if isinstance(item, bytes):
                                out(item)
                            elif isinstance(item, dict):
                                _event(label, item)
                        value: dict[str, Any] = await wait_result(call)
            except (RemoteError, ChannelClosed, RelayError) as exc:
                out.close()
                click.echo(f"Error: agent {label}: {exc}", err=True)
                failed = True
                return
            out.close()
            if value.get("message"):
                click.echo(f"agent {label}: {value['message']}")
            elif value.get("exit_code"):
                click.echo(f"agent {label}: PlatformIO exited with {value['exit_code']}", err=True)
                failed = True

        async with trio.open_nursery() as nursery:
            for ref in agents:
                nursery.start_soon(one, ref)
    return 1 if failed else 0


def _event(label: str, event: dict[str, Any]) -> None:
    if "info" in event:
        i = event["info"]
        pio = i.get("platformio") or "not installed"
        click.echo(
            f"agent {label}: pio-remote {i.get('version')}, Python {i.get('python')}, "
            f"PlatformIO Core {pio}, can build and test with it: "
            f"{'yes' if i.get('can_test') else 'no'}"
        )
    elif "running" in event:
        click.echo(f"agent {label}: $ {' '.join(map(str, event['running']))}", err=True)
