"""`pio-remote device lock / unlock`: hold a board for a person or a CI job.

    LEASE=$(pio-remote -a lab device lock -p /dev/ttyACM0 --ttl 30m --note "nightly")
    PIO_REMOTE_LEASE=$LEASE pio-remote -a lab test ...
    pio-remote -a lab device unlock -p /dev/ttyACM0

Without --ttl the command holds the lease until it is stopped (Ctrl-C, SIGTERM,
or the CI job killed): the lease dies with it. stdout gets the lease id alone.
"""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Callable
from typing import Any

import click
import trio

from pio_remote.agent.leases import MAX_TTL, when
from pio_remote.cli.common import Options, clean, run
from pio_remote.cli.device_cmds import device
from pio_remote.client.api import AgentSession, Client, RemoteError
from pio_remote.client.boards import Lease
from pio_remote.client.targets import display_name

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90', '90s', '30m', '2h', '1d' as seconds."""
    m = _DURATION.match(text)
    if not m or float(m[1]) <= 0:
        raise click.BadParameter(f"{text!r} is not a duration such as 90s, 30m, 2h or 1d")
    return float(m[1]) * _UNITS[m[2]]


class Duration(click.ParamType):
    """A duration of at most MAX_TTL (the agent refuses longer leases): beyond it, a
    usage error here rather than the agent's refusal."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = value if isinstance(value, float) else parse_duration(str(value))
        if seconds > MAX_TTL:
            self.fail(f"{value!r} is longer than a lease may last: at most a week (7d)", param, ctx)
        return seconds


async def _one_agent(client: Client, opts: Options) -> str:
    if len(opts.agents) == 1:
        return opts.agents[0]
    if opts.agents:
        raise RemoteError("a lease is on one agent: give exactly one -a AGENT")
    online = await client.list_agents()
    if len(online) != 1:
        raise RemoteError("more than one agent (or none) is online: choose one with -a AGENT")
    return online[0].agent


@device.command("lock")
@click.option("-p", "--port", required=True, help="The port to hold")
@click.option(
    "--ttl",
    type=Duration(),
    help="Hold it this long, detached, up to 7d (e.g. 30m); default: while this command runs",
)
@click.option(
    "--wait",
    type=click.FloatRange(0, 3600),
    default=0.0,
    show_default=True,
    help="Seconds to wait for a port someone else holds",
)
@click.option("--note", default="", help="Shown to others in 'device list'")
@click.pass_obj
def lock(opts: Options, port: str, ttl: float | None, wait: float, note: str) -> None:
    """Lease a port; prints the lease id for PIO_REMOTE_LEASE."""

    async def go() -> None:
        async with Client.connect() as client:
            ref = await _one_agent(client, opts)
            async with client.session(ref) as agent:
                label = display_name(client, agent.agent_id)

                def waiting(text: str) -> None:  # said on stderr, as `test --wait` says it
                    click.echo(f"{label}:{port}: {clean(text)}", err=True)

                if ttl is not None:
                    lease = await agent.lease(port, ttl, wait=wait, note=note, on_waiting=waiting)
                    _announce(lease, label, "until")
                    return
                await _hold(agent, port, wait, note, label, waiting)

    run(go)


async def _hold(
    agent: AgentSession,
    port: str,
    wait: float,
    note: str,
    label: str,
    waiting: Callable[[str], None],
) -> None:
    """Hold the lease until a signal, or until the agent ends it; it ends with the block."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with agent.lock(port, wait=wait, note=note, on_waiting=waiting) as lease:
            _announce(lease, label, "while this command runs; renewed")
            async for _ in signals:
                break
    click.echo(f"lease on {port} released", err=True)


def _announce(lease: Lease, label: str, how: str) -> None:
    click.echo(lease.id)
    sys.stdout.flush()
    until = when(lease.until)
    click.echo(
        f"agent {label}: {lease.port} leased to {lease.holder} "
        + (f"until {until}" if how == "until" else f"{how} (next expiry {until})"),
        err=True,
    )


@device.command("unlock")
@click.option("-p", "--port", required=True, help="The port whose lease to release")
@click.option(
    "--force",
    is_flag=True,
    help="Break another client's lease (the agent's owner only: see 'agent invite --owner')",
)
@click.pass_obj
def unlock(opts: Options, port: str, force: bool) -> None:
    """Release a lease this client holds (or, as the agent's owner, anyone's)."""

    async def go() -> str:
        async with Client.connect() as client:
            ref = await _one_agent(client, opts)
            async with client.session(ref) as agent:
                return await agent.unlock(port, force=force)

    click.echo(f"released lease {run(go)} on {port}", err=True)
