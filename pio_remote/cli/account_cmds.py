"""`pio-remote account ...`: where the relay is and which token to use.

The token never needs to be on a command line, where `ps` and shell history
would keep it: `account login` prompts for it on a terminal, reads it from
stdin with `--token -`, or takes it from PIO_REMOTE_AUTH_TOKEN.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from urllib.parse import urlsplit

import click

from pio_remote import home
from pio_remote.cli.common import EXIT_USAGE, clean, fail, run

TOKEN_HELP = (
    "Token from 'pio-remote relay user add'. '-' reads it from stdin; without this option "
    f"it comes from {home.ENV_TOKEN}, or a prompt on a terminal."
)


def is_loopback(url: str) -> bool:
    """True when ``url``'s host is this machine (localhost, 127.0.0.0/8, ::1)."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cleartext_warning(url: str) -> str | None:
    """The warning for a relay URL that would send the bearer token unencrypted."""
    if url.lower().startswith("ws://") and not is_loopback(url):
        secure = "wss://" + url[len("ws://") :]
        return (
            f"warning: {url} is not encrypted: the relay token crosses the network in clear "
            f"text. Use {secure} (the relay behind TLS, see docs/relay.md)"
        )
    return None


def _read_token(option: str | None) -> str:
    """The token from --token, stdin, the environment or a prompt; never an empty one."""
    if option == "-":
        token = sys.stdin.readline()
    elif option is not None:
        click.echo(
            "warning: a token given as --token VALUE is visible to other users in 'ps' and "
            "stays in your shell history; use --token - (stdin), the prompt, or "
            f"{home.ENV_TOKEN}",
            err=True,
        )
        token = option
    elif os.environ.get(home.ENV_TOKEN):
        token = os.environ[home.ENV_TOKEN]
    elif sys.stdin.isatty():
        token = click.prompt("Token", hide_input=True, default="", show_default=False)
    else:
        fail(
            "no token given: pipe it to 'account login --relay URL --token -', or set "
            f"{home.ENV_TOKEN}",
            EXIT_USAGE,
        )
    token = token.strip()
    if not token:
        fail(
            "the token is empty: give the token 'pio-remote relay user add NAME' printed "
            "(the stored login is unchanged)",
            EXIT_USAGE,
        )
    return token


@click.group()
def account() -> None:
    """Relay account of this machine."""


@account.command()
@click.option("--relay", required=True, help="Relay URL, e.g. wss://relay.example.org")
@click.option("--token", metavar="TOKEN|-", help=TOKEN_HELP)
def login(relay: str, token: str | None) -> None:
    """Check the token with the relay, then store URL and token (mode 0600)."""
    from pio_remote.client.api import Client

    secret = _read_token(token)
    if warning := cleartext_warning(relay):
        click.echo(warning, err=True)

    async def check() -> str:
        async with Client.connect(relay, secret) as client:
            return client.account

    name = run(check)
    home.save_credentials(home.home_dir(), relay, secret)
    click.echo(f"Logged in to {relay} as '{clean(name)}'")


@account.command()
def show() -> None:
    """Show the relay and account in use (never the token)."""
    from pio_remote.client.api import Client

    async def who() -> tuple[str, str]:
        async with Client.connect() as client:
            return client.link.url, client.account

    url, name = run(who)
    if warning := cleartext_warning(url):
        click.echo(warning, err=True)
    identity = home.load_identity(home.home_dir())
    click.echo(f"relay:    {url}\naccount:  {clean(name)}\nkey:      {identity.fingerprint}")
