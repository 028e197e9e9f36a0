"""`pio-remote device ...`: serial ports on remote agents."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from pio_remote.cli.common import Options, console, run
from pio_remote.client import AgentSession, Client, RemoteError


@click.group()
def device() -> None:
    """Devices (serial ports) on agents."""


async def resolve_targets(client: Client, agents: list[str]) -> list[str]:
    """The -a agents, or every reachable online agent."""
    if agents:
        return agents
    return [a.agent for a in await client.list_agents()]


def when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def held_by(dev: dict[str, Any]) -> str:
    """The 'Held by' cell: a lease's holder and expiry, or a running command's holder."""
    lease = dev.get("lease")
    if not isinstance(lease, dict):
        return ""
    text = str(lease.get("holder", ""))
    if lease.get("until"):
        text += f" until {when(float(lease['until']))}"
    return text + (f" ({lease['note']})" if lease.get("note") else "")


def display_name(client: Client, agent_id: str) -> str:
    owner, _, name = agent_id.partition("/")
    return name if owner == client.account and name else agent_id


@device.command("list")
@click.option(
    "--json-output",
    is_flag=True,
    help="Print JSON: {agent: [{port, description, hwid}]}; TCP forwards carry a 'forward' key",
)
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for each agent")
@click.option("--mdns", is_flag=True, help="List network devices each agent sees over mDNS")
@click.pass_obj
def list_devices(opts: Options, json_output: bool, timeout: float, mdns: bool) -> None:
    """Serial ports of each target agent; an agent that fails is reported, not waited on."""
    method = "device.mdns" if mdns else "device.list"

    async def fetch() -> dict[str, Any]:
        async with Client.connect() as client:
            targets = await resolve_targets(client, opts.agents)
            if mdns:
                results = await client.fan_out(targets, method, timeout=timeout)
            else:
                results = await client.fan_out_with(targets, ports_and_forwards, timeout)
            return {display_name(client, k): v for k, v in sorted(results.items())}

    results = run(fetch)
    failed = any(isinstance(v, RemoteError) for v in results.values())
    if json_output:
        click.echo(
            json.dumps(
                {
                    k: ({"error": str(v)} if isinstance(v, RemoteError) else v)
                    for k, v in results.items()
                },
                indent=2,
            )
        )
    else:
        out = console()
        if not results:
            out.print("No agents online.")
        for agent_name, value in results.items():
            if isinstance(value, RemoteError):
                out.print(
                    f"[bold]Agent {agent_name}[/bold]: [red]error:[/red] {value}", highlight=False
                )
                continue
            if mdns:
                out.print(mdns_table(agent_name, value))
                continue
            ports = [dev for dev in value if "forward" not in dev]
            forwards = [dev for dev in value if "forward" in dev]
            leased = any("lease" in dev for dev in ports)
            table = Table(
                "Port",
                "Description",
                "Hardware ID",
                *(["Held by"] if leased else []),
                title=f"Agent {agent_name}",
                title_justify="left",
            )
            for dev in ports:
                row = [dev["port"], dev["description"], dev["hwid"]]
                table.add_row(*row, *([held_by(dev)] if leased else []))
            out.print(table)
            if forwards:
                out.print(forwards_table(agent_name, forwards))
    if failed:
        sys.exit(1)


async def ports_and_forwards(agent: AgentSession) -> list[dict[str, Any]]:
    """PlatformIO's port list, then one entry per TCP destination the agent forwards to.

    A forward entry keeps PlatformIO's keys (port, description, hwid) and adds
    ``forward`` (the destination for ``device forward --tcp``) and ``lease_port``
    (the board port a debug session holds, or null).
    """
    found: list[dict[str, Any]] = list(await agent.call("device.list"))
    try:
        forwards = await agent.call("forward.list")
    except RemoteError as exc:
        if exc.code != "unknown_method":  # an older agent forwards nothing
            raise
        forwards = []
    for item in forwards:
        dest = str(item["forward"])
        found.append(
            {
                "port": dest,
                "description": f"TCP forward: pio-remote device forward --tcp {dest}",
                "hwid": "forward",
                "forward": dest,
                "lease_port": item.get("port"),
            }
        )
    return found


def forwards_table(agent_name: str, forwards: list[dict[str, Any]]) -> Table:
    table = Table(
        "Destination",
        "Holds port while open",
        title=f"Agent {agent_name}: device forward --tcp",
        title_justify="left",
    )
    for item in forwards:
        # Agent text, printed literally: "[::1]:3333" is not rich markup.
        table.add_row(Text(str(item["forward"])), Text(str(item.get("lease_port") or "-")))
    return table


def mdns_table(agent_name: str, services: list[dict[str, Any]]) -> Table:
    table = Table(
        "Name",
        "Type",
        "IP",
        "Port",
        "Properties",
        title=f"Agent {agent_name} (mDNS)",
        title_justify="left",
    )
    for svc in services:
        props = ", ".join(f"{k}={v}" for k, v in (svc.get("properties") or {}).items())
        table.add_row(svc["name"], svc["type"], svc["ip"], str(svc["port"]), props)
    return table
