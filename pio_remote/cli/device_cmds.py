"""`pio-remote device ...`: serial ports on remote agents."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import click
import trio

from pio_remote.agent.leases import when
from pio_remote.cli.common import EXIT_ERROR, Options, clean, console, plain, run
from pio_remote.cli.lazy import LazyGroup
from pio_remote.client.api import AgentSession, Client, RemoteError
from pio_remote.client.boards import Port
from pio_remote.client.targets import display_name, resolve_targets

if TYPE_CHECKING:
    from rich.table import Table


@click.group(
    cls=LazyGroup,
    lazy={
        "monitor": "pio_remote.cli.monitor_cmds:monitor",
        "forward": "pio_remote.cli.forward_cmds:forward_cmd",
        "lock": "pio_remote.cli.lease_cmds:lock",
        "unlock": "pio_remote.cli.lease_cmds:unlock",
        "reset": "pio_remote.cli.power_cmds:reset",
        "power": "pio_remote.cli.power_cmds:power",
    },
)
def device() -> None:
    """Devices (serial ports) on agents."""


def held_by(dev: dict[str, Any]) -> str:
    """The 'Held by' cell: a lease's holder and expiry, or a running command's holder."""
    lease = dev.get("lease")
    if not isinstance(lease, dict):
        return ""
    text = str(lease.get("holder", ""))
    if lease.get("until"):
        text += f" until {when(float(lease['until']))}"
    return text + (f" ({lease['note']})" if lease.get("note") else "")


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
        async with Client.connect(agents=opts.agents) as client:
            targets = await resolve_targets(client, opts.agents)
            if mdns:
                results = await client.fan_out(targets, method, timeout=timeout)
            else:
                results = await client.fan_out_with(targets, ports_and_forwards, timeout)
            return {display_name(client, k): v for k, v in sorted(results.items())}

    results = {k: _checked(v) for k, v in run(fetch).items()}
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
        _print_tables(results, mdns)
    if failed:
        sys.exit(EXIT_ERROR)


def _checked(value: Any) -> Any:
    """An agent's answer if it is a list of objects; else an error in its place."""
    if isinstance(value, RemoteError):
        return value
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        return RemoteError("the agent's answer is not a list of devices")
    return value


def _print_tables(results: dict[str, Any], mdns: bool) -> None:
    """One table per agent. Every cell came from an agent or a device: plain text only."""
    from rich.text import Text

    out = console()
    if not results:
        out.print("No agents online.")
    for agent_name, value in results.items():
        if isinstance(value, RemoteError):
            line = Text.assemble(
                (f"Agent {clean(agent_name)}", "bold"), ": ", ("error:", "red"), f" {clean(value)}"
            )
            out.print(line, highlight=False)
        elif mdns:
            out.print(mdns_table(agent_name, value))
        else:
            out.print(device_table(agent_name, [d for d in value if "forward" not in d]))
            if forwards := [d for d in value if "forward" in d]:
                out.print(forwards_table(agent_name, forwards))


def device_table(agent_name: str, devices: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    leased = any("lease" in dev for dev in devices)
    table = Table(
        "Port",
        "Description",
        "Hardware ID",
        *(["Held by"] if leased else []),
        title=plain(f"Agent {agent_name}"),
        title_justify="left",
    )
    for dev in devices:
        cells = [dev.get("port", ""), dev.get("description", ""), dev.get("hwid", "")]
        table.add_row(*map(plain, cells), *([plain(held_by(dev))] if leased else []))
    return table


async def ports_and_forwards(agent: AgentSession) -> list[dict[str, Any]]:
    """PlatformIO's port list, then one entry per TCP destination the agent forwards to.

    A forward entry keeps PlatformIO's keys (port, description, hwid) and adds
    ``forward`` (the destination for ``device forward --tcp``) and ``lease_port``
    (the board port a debug session holds, or null).
    """
    answers: dict[str, Any] = {}

    async def ask(name: str, fn: Callable[[], Awaitable[Any]]) -> None:
        try:
            answers[name] = await fn()
        except Exception as exc:  # raised below, plain (not in an ExceptionGroup)
            answers[name] = exc

    # Both at once: neither depends on the other, and each is a round trip.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, "ports", agent.ports)
        nursery.start_soon(ask, "forwards", lambda: agent.call("forward.list"))
    if isinstance(answers["ports"], Exception):
        raise answers["ports"]
    found = [_port_json(p) for p in answers["ports"]]
    forwards = answers["forwards"]
    if isinstance(forwards, Exception):
        # An older agent has no forward.list: it forwards nothing.
        if not isinstance(forwards, RemoteError) or forwards.code != "unknown_method":
            raise forwards
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


def _port_json(port: Port) -> dict[str, Any]:
    """PlatformIO's keys, then the agent's extra keys a port has (lease, power, image)."""
    item: dict[str, Any] = {"port": port.port, "description": port.description}
    item["hwid"] = port.hwid
    extra = {"lease": port.lease, "power": port.power, "flashed_sha256": port.flashed_sha256}
    return item | {k: v for k, v in extra.items() if v}


def forwards_table(agent_name: str, forwards: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    table = Table(
        "Destination",
        "Holds port while open",
        title=plain(f"Agent {agent_name}: device forward --tcp"),
        title_justify="left",
    )
    for item in forwards:
        # Agent text, printed literally: "[::1]:3333" is not rich markup.
        table.add_row(plain(item["forward"]), plain(item.get("lease_port") or "-"))
    return table


def mdns_table(agent_name: str, services: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    table = Table(
        "Name",
        "Type",
        "IP",
        "Port",
        "Properties",
        title=plain(f"Agent {agent_name} (mDNS)"),
        title_justify="left",
    )
    for svc in services:
        props = ", ".join(f"{k}={v}" for k, v in (svc.get("properties") or {}).items())
        cells = (svc.get("name"), svc.get("type"), svc.get("ip"), svc.get("port"), props)
        table.add_row(*(plain("" if c is None else c) for c in cells))
    return table
