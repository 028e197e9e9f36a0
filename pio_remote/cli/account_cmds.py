"""`pio-remote account ...`: where the relay is and which token to use."""

from __future__ import annotations

import click

from pio_remote import home
from pio_remote.cli.common import run
from pio_remote.client import Client


@click.group()
def account() -> None:
    """Relay account of this machine."""


@account.command()
@click.option("--relay", required=True, help="Relay URL, e.g. ws://127.0.0.1:8765")
@click.option("--token", required=True, help="Token from 'pio-remote relay user add'")
def login(relay: str, token: str) -> None:
    """Check the token with the relay, then store URL and token (mode 0600)."""

    async def check() -> str:
        async with Client.connect(relay, token) as client:
            return client.account

    name = run(check)
    home.save_credentials(home.home_dir(), relay, token)
    click.echo(f"Logged in to {relay} as '{name}'")


@account.command()
def show() -> None:
    """Show the relay and account in use (never the token)."""

    async def who() -> tuple[str, str]:
        async with Client.connect() as client:
            return client.link.url, client.account

    url, name = run(who)
    identity = home.load_identity(home.home_dir())
    click.echo(f"relay:    {url}\naccount:  {name}\nkey:      {identity.fingerprint}")
