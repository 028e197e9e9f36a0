"""``pio-remote relay db ...`` and the ``--database`` option: a cluster's PostgreSQL.

See docs/scaling.md. Kept apart from cli.py so each stays short; cli.py mounts
``db_group`` under ``relay``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import click

from pio_remote.relay.accounts import AccountError, check_name

DATABASE_ENV = "PIO_REMOTE_RELAY_DATABASE"


class ConfigError(click.ClickException):
    """A bad option or setting: one line, exit code 2 (docs/cli.md)."""

    exit_code = 2


def pgstore() -> ModuleType:
    """The cluster store, or a one-line error when psycopg (the "cluster" extra) is missing."""
    try:
        from pio_remote.relay.cluster import store as pgstore
    except ImportError:
        raise ConfigError(
            "--database needs psycopg: install it with pip install 'pio-remote[cluster]'"
        ) from None
    return pgstore


def database_option(func: Any) -> Any:
    return click.option(
        "--database",
        metavar="URL",
        envvar=DATABASE_ENV,
        show_envvar=True,
        help="PostgreSQL URL (postgresql://USER@HOST:PORT/DB) of a relay cluster's accounts, "
        "instead of --data-dir's SQLite file. Put the password in ~/.pgpass or PGPASSWORD, "
        "never in the URL on a command line.",
    )(func)


def cluster_options(func: Any) -> Any:
    """``relay serve``'s --database, --node-id and --node-timeout."""
    func = click.option(
        "--node-timeout",
        type=click.FloatRange(min=1),
        default=10.0,
        show_default=True,
        help="Seconds without a heartbeat after which a node counts as dead and its agents "
        "are no longer listed (nodes beat every fifth of it).",
    )(func)
    func = click.option(
        "--node-id",
        help="This node's name in a cluster of relays sharing --database (docs/scaling.md); "
        "unique per running node.",
    )(func)
    return database_option(func)


def check_cluster(database: str | None, node_id: str | None) -> None:
    """A usage error unless --node-id, if given, is a valid name and has --database."""
    if node_id is None:
        return
    if not database:
        raise click.UsageError("--node-id needs --database: nodes share accounts through it")
    try:
        check_name(node_id)
    except AccountError as exc:
        raise click.BadParameter(
            str(exc).replace("account name", "node id"), param_hint="--node-id"
        ) from None


@click.group("db")
def db_group() -> None:
    """The PostgreSQL database of a relay cluster (docs/scaling.md)."""


@db_group.command("upgrade")
@click.option(
    "--database",
    metavar="URL",
    envvar=DATABASE_ENV,
    show_envvar=True,
    required=True,
    help="PostgreSQL URL; the password goes in ~/.pgpass or PGPASSWORD.",
)
def db_upgrade(database: str) -> None:
    """Create or migrate the relay's tables; safe to run again, and from several nodes."""
    try:
        before, after = pgstore().upgrade_database(database)
    except AccountError as exc:
        raise ConfigError(str(exc)) from None
    if before == after:
        click.echo(f"database schema is current (version {after})", err=True)
    else:
        click.echo(f"database schema upgraded from version {before} to {after}", err=True)
