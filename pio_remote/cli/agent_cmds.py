"""`pio-remote agent ...`: run an agent, invite and pair clients, list agents."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import click

from pio_remote import daemon, home
from pio_remote.agent import allowlist as trust
from pio_remote.cli.common import clean, console, plain, run
from pio_remote.wire import e2e
from pio_remote.wire.invite import Invite


@click.group()
def agent() -> None:
    """Agents: the machines next to the boards."""


@agent.command()
@click.option("-n", "--name", help="Agent name (default: agent.toml's name, else the hostname)")
@click.option(
    "-s",
    "--share",
    "shares",
    multiple=True,
    metavar="ACCOUNT",
    help="Let this relay account reach the agent (repeatable)",
)
@click.option(
    "-d",
    "--working-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where uploads and synced projects live",
)
@click.option(
    "--port-glob",
    "port_globs",
    multiple=True,
    metavar="GLOB",
    help="Extra ports to offer, e.g. '/tmp/vb/*' (repeatable)",
)
@click.option(
    "--allow-client-commands",
    is_flag=True,
    help="Let clients' platformio.ini run upload_command and extra_scripts here",
)
@click.option(
    "--serial-backend",
    type=click.Choice(["fd", "thread"]),
    help="How ports are read: fd (trio polls the port, POSIX) or thread (pyserial in a "
    "thread per port, every OS); default: agent.toml's serial_backend, else fd where it runs",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="The least important events the log shows",
)
def start(
    name: str | None,
    shares: tuple[str, ...],
    working_dir: Path | None,
    port_globs: tuple[str, ...],
    allow_client_commands: bool,
    serial_backend: str | None,
    log_level: str,
) -> None:
    """Connect out to the relay and serve paired clients until stopped.

    Settings: $PIO_REMOTE_HOME/agent.toml (ports, uploaders, forwards), every key in
    docs/agent-config.md.
    """
    from pio_remote.agent import config, service
    from pio_remote.cli.account_cmds import cleartext_warning

    daemon.setup_logging(log_level)
    config.load(home.home_dir())  # a broken agent.toml: exit 2, before connecting
    if warning := cleartext_warning(home.load_credentials(home.home_dir()).relay):
        click.echo(warning, err=True)
    # AgentStopped (replaced, token refused) exits 2 with one line: see common.ERRORS.
    run(
        service.main,
        name,
        list(shares),
        list(port_globs),
        working_dir,
        allow_client_commands,
        serial_backend,
    )


@agent.command()
@click.option("-n", "--name", help="Name of the agent this invite is for (default: hostname)")
@click.option(
    "--ttl",
    type=click.IntRange(min=1),
    default=trust.DEFAULT_INVITE_TTL,
    show_default=True,
    help="Seconds the invite stays valid (at least 1)",
)
@click.option(
    "--owner",
    is_flag=True,
    help="The client that pairs is an owner: it may run 'update' and 'device unlock --force'",
)
@click.option(
    "--label",
    help="How 'agent clients' lists the client that pairs (default: the name it gives)",
)
def invite(name: str | None, ttl: int, owner: bool, label: str | None) -> None:
    """Print a one-time invite that lets one client pair with this agent."""
    # A broken home, agent.toml or identity.key is a ConfigError: exit 2 (common.ERRORS).
    from pio_remote.agent import config as agent_config

    home_path = home.home_dir()
    config = agent_config.load(home_path)
    identity = home.load_identity(home_path)
    agent_name = name or config.name or socket.gethostname()
    grant = trust.InviteGrant(trust.OWNER if owner else trust.CLIENT, (label or "")[:200])
    inv = trust.create_invite(home_path, agent_name, identity.public, ttl, grant)
    click.echo(inv.encode())


@agent.command()
@click.argument("invite_text", metavar="INVITE")
@click.option("--label", help="How the agent lists this client (default: hostname)")
def pair(invite_text: str, label: str | None) -> None:
    """Pair this client with an agent: pins its key, and the agent allows this client."""
    from pio_remote.client import pins
    from pio_remote.client.api import Client

    Invite.decode(invite_text)  # a damaged invite is refused before connecting

    async def do_pair() -> str:
        async with Client.connect() as client:
            return await client.pair(invite_text, label)

    agent_id = run(do_pair)
    key = pins.pinned_key(home.home_dir(), agent_id)
    assert key is not None
    click.echo(f"Paired with agent '{clean(agent_id)}' (key {e2e.fingerprint(key)})")


@agent.command("list")
@click.option("--json-output", is_flag=True, help="Print JSON")
def list_agents(json_output: bool) -> None:
    """Online agents this account can reach."""
    from pio_remote.client.api import Client

    async def fetch() -> list:
        async with Client.connect() as client:
            return await client.list_agents()

    agents = run(fetch)
    if json_output:
        click.echo(
            json.dumps(
                [
                    {
                        "agent": a.agent,
                        "owner": a.owner,
                        "name": a.name,
                        "shared": a.shared,
                        "connected_at": a.connected_at,
                        "fingerprint": a.fingerprint,
                    }
                    for a in agents
                ],
                indent=2,
            )
        )
        return
    if not agents:
        click.echo("No agents online.")
        return
    from rich.table import Table

    table = Table("Agent", "Owner", "Shared", "Online since", "Key fingerprint")
    for a in agents:  # names and times come from the relay: plain text only
        cells = (a.name, a.owner, "yes" if a.shared else "", a.connected_at, a.fingerprint)
        table.add_row(*map(plain, cells))
    console().print(table)


@agent.command()
@click.option("--revoke", metavar="FINGERPRINT", help="Remove this client from the allow-list")
@click.option("--json-output", is_flag=True, help="Print JSON")
def clients(revoke: str | None, json_output: bool) -> None:
    """Clients this agent lets in (its allow-list): role, relay account, label.

    The role (owner or client) is what the agent decides with; the relay account is
    the one the client paired from, as the relay named it: information only.
    """
    home_path = home.home_dir()
    if revoke:
        if not trust.revoke_client(home_path, revoke):
            raise click.ClickException(f"no paired client with fingerprint {revoke}")
        click.echo(f"Revoked {revoke}")
        return
    rows = [
        {
            "fingerprint": e2e.fingerprint(bytes.fromhex(key)),
            "role": trust.entry_role(info),
            "account": _text(info.get("account")),
            "label": _text(info.get("label")),
            "client_label": _text(info.get("client_label", info.get("label"))),
            "paired_at": info.get("paired_at") if isinstance(info.get("paired_at"), int) else None,
        }
        for key, info in sorted(trust.authorized_clients(home_path).items())
    ]
    if json_output:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No paired clients: pair one with 'pio-remote agent invite'.")
        return
    from rich.table import Table

    table = Table("Key fingerprint", "Role", "Paired from account", "Label", "Paired at")
    for row in rows:  # labels and accounts came over the network: plain text only
        label = row["label"]
        if row["client_label"] not in ("", label):  # the owner named it at `agent invite`
            label += f" (its own name: {row['client_label']})"
        paired = row["paired_at"]
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(paired)) if paired else ""
        cells = (row["fingerprint"], row["role"], row["account"] or "(not recorded)", label, when)
        table.add_row(*map(plain, cells))
    console().print(table)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
