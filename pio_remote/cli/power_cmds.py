"""`pio-remote device reset / power`: reset a board, switch it on or off.

    pio-remote -a lab device reset -p /dev/ttyACM0
    pio-remote -a lab device power cycle -p /dev/ttyACM0

The agent does the work with its owner's settings ([[reset]], [[power]] in agent.toml);
leases apply as for an upload.
"""

from __future__ import annotations

from typing import Literal, cast

import click

from pio_remote.cli.common import Options, run
from pio_remote.cli.device_cmds import device
from pio_remote.cli.lease_cmds import _one_agent
from pio_remote.client.api import Client


@device.command("reset")
@click.option("-p", "--port", required=True, help="The board's serial port")
@click.pass_obj
def reset(opts: Options, port: str) -> None:
    """Reset the board by pulsing DTR/RTS (the agent's [[reset]] style)."""

    async def go() -> str:
        async with Client.connect() as client:
            async with client.session(await _one_agent(client, opts)) as agent:
                return await agent.reset(port)

    style = run(go)
    click.echo(f"reset {port} ({style})", err=True)


@device.command("power")
@click.argument("action", type=click.Choice(["on", "off", "cycle"]))
@click.option("-p", "--port", required=True, help="The board's serial port")
@click.pass_obj
def power(opts: Options, action: str, port: str) -> None:
    """Switch the board on or off, or cycle it, with the agent's [[power]] commands."""

    async def go() -> None:
        async with Client.connect() as client:
            async with client.session(await _one_agent(client, opts)) as agent:
                await agent.power(port, cast(Literal["on", "off", "cycle"], action))

    run(go)
    click.echo(f"power {action}: {port}", err=True)
