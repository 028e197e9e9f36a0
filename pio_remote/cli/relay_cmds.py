"""``pio-remote relay ...``: run the relay and manage its accounts.

``relay_group`` is a click group; the main CLI mounts it as ``relay``, and
``python -m pio_remote.relay`` runs it on its own.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import signal
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pio_remote import daemon
from pio_remote.cli.relay_db_cmds import (
    ConfigError,
    check_cluster,
    cluster_options,
    database_option,
    db_group,
    pgstore,
)
from pio_remote.net.groups import first_leaf
from pio_remote.relay.accounts import AccountError, Accounts
from pio_remote.relay.limits import Limits

if TYPE_CHECKING:
    from pio_remote.relay.cluster.store import PgAccounts

log = logging.getLogger("relay")

DEFAULT_DATA_DIR = "./relay-data"
DATA_DIR_ENV = "PIO_REMOTE_RELAY_DATA"
LOG_LEVELS = ("debug", "info", "warning", "error")
_SIZE_UNITS = {"": 1, "k": 1000, "kib": 1024, "m": 1000**2, "mib": 1024**2, "g": 1000**3}
_SIZE_UNITS |= {"kb": 1000, "mb": 1000**2, "gb": 1000**3, "gib": 1024**3}


class ByteSize(click.ParamType):
    """A byte count: 4194304, 4MiB, 512KiB, 10MB."""

    name = "BYTES"

    def __init__(self, minimum: int = 0) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().replace(" ", "")
        number = text.rstrip("kmgib")
        unit = text[len(number) :]
        try:
            size = int(float(number) * _SIZE_UNITS[unit])
        except (ValueError, KeyError):
            self.fail(f"{value!r} is not a size: use bytes, or a unit as in 4MiB or 512KiB")
        if size < self.minimum:
            self.fail(f"{value!r} is below the minimum of {self.minimum} bytes")
        return size


def limit_options(func: Any) -> Any:
    """One ``relay serve`` option per field of ``Limits``: its name, default, bounds and
    help all come from the field, so a new limit is declared once, in relay/limits.py."""
    for f in reversed(dataclasses.fields(Limits)):
        least, above = f.metadata["least"], f.metadata["above"]
        kind: click.ParamType
        default = f.default
        if f.metadata["unit"] in ("bytes", "bytes/s"):
            kind, default = ByteSize(minimum=int(least)), int(default)
        elif isinstance(f.default, float):
            kind = click.FloatRange(min=least, min_open=above)
        else:
            kind = click.IntRange(min=int(least), min_open=above)
        func = click.option(
            "--" + f.name.replace("_", "-"),
            type=kind,
            default=default,
            show_default=True,
            help=f.metadata["help"],
        )(func)
    return func


def _data_dir_option(func: Any) -> Any:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_DATA_DIR,
        envvar=DATA_DIR_ENV,
        show_default=True,
        show_envvar=True,
        help="Directory of the account database ('serve' and 'user add' create it, mode 0700).",
    )(func)


def _accounts(
    data_dir: Path, database: str | None = None, *, create: bool = True
) -> Accounts | PgAccounts:
    """The account database; only ``user add`` and ``serve`` may create a SQLite one."""
    try:
        if database:
            return pgstore().PgAccounts(database)  # SQLite relays never load psycopg
        return Accounts(data_dir, create=create)
    except AccountError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot open the account database in {str(data_dir)!r}: {exc} "
            "(check --data-dir and its permissions)"
        ) from None


def parse_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6HOST]:PORT`` -> (host, port); port 0 picks a free one."""
    host, sep, port_text = bind.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise click.BadParameter(
            f"{bind!r} is not HOST:PORT (for example 127.0.0.1:8765, or 0.0.0.0:8765 "
            "to listen on every interface)",
            param_hint="--bind",
        )
    return host, int(port_text)


def read_secret_file(path: Path, option: str) -> str:
    """A token from a file only its owner can read (as libpq insists for ~/.pgpass):
    a secret never goes on a command line, where ``ps`` and shell history see it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {option} {str(path)!r}: {exc}") from None
    if mode & 0o077:
        raise ConfigError(
            f"{option} {str(path)!r} is readable by others (mode {mode & 0o777:o}): "
            f"run 'chmod 600 {path}'"
        )
    if not text or any(c.isspace() for c in text):
        raise ConfigError(
            f"{option} {str(path)!r} must hold one token, e.g. from 'openssl rand -hex 32'"
        )
    return text


def _tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise click.UsageError("TLS needs both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise click.ClickException(
            f"cannot load the TLS certificate {str(cert)!r} with key {str(key)!r}: {exc}"
        ) from None
    return context


@click.group("relay")
def relay_group() -> None:
    """Run a pio-remote relay and manage its accounts."""


@relay_group.command("serve")
@click.option("--bind", default="127.0.0.1:8765", show_default=True, help="HOST:PORT to listen on.")
@_data_dir_option
@cluster_options
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM certificate chain: serve wss:// (needs --tls-key). Without it: plain ws://.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM private key of --tls-cert (keep it mode 0600).",
)
@click.option(
    "--ping-interval",
    type=click.FloatRange(min=0.01),
    default=15.0,
    show_default=True,
    help="Seconds of silence before the relay PINGs a peer.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0.01),
    default=45.0,
    show_default=True,
    help="Seconds of silence (or of not reading) before the relay drops a peer.",
)
@limit_options
@click.option(
    "--metrics-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File (mode 0600) holding the bearer token /metrics asks for on --bind. "
    "Without it (and without --metrics-bind) /metrics is not served.",
)
@click.option(
    "--metrics-bind",
    metavar="HOST:PORT",
    help="Also serve /metrics (and /healthz) without a token on this address, e.g. "
    "127.0.0.1:9765; keep it private.",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    metavar="IP",
    help="A reverse proxy's address (repeatable): its connections are limited and logged "
    "per client, by the X-Real-IP header it sets, instead of as one address.",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="The least important events the log shows",
)
def serve_command(
    bind: str,
    data_dir: Path,
    database: str | None,
    node_id: str | None,
    node_timeout: float,
    tls_cert: Path | None,
    tls_key: Path | None,
    ping_interval: float,
    idle_timeout: float,
    log_level: str,
    metrics_token_file: Path | None,
    metrics_bind: str | None,
    trusted_proxies: tuple[str, ...],
    **limit_values: Any,
) -> None:
    """Run the relay until SIGINT or SIGTERM. Limits: see docs/relay.md."""
    host, port = parse_bind(bind)
    options: dict[str, Any] = {"limits": Limits(**limit_values), "trusted_proxies": trusted_proxies}
    if metrics_bind is not None:
        try:
            options["metrics_bind"] = parse_bind(metrics_bind)
        except click.BadParameter as exc:
            raise click.BadParameter(exc.message, param_hint="--metrics-bind") from None
    for proxy in trusted_proxies:
        try:
            ipaddress.ip_address(proxy)
        except ValueError:
            raise click.BadParameter(
                f"{proxy!r} is not an IP address (e.g. 127.0.0.1 for a proxy on this host)",
                param_hint="--trusted-proxy",
            ) from None
    if metrics_token_file is not None:
        options["metrics_token"] = read_secret_file(metrics_token_file, "--metrics-token-file")
    if idle_timeout <= ping_interval:
        raise click.BadParameter(
            f"must be longer than --ping-interval ({ping_interval:g} s), so a PING can be "
            "answered before the peer is dropped",
            param_hint="--idle-timeout",
        )
    check_cluster(database, node_id)
    tls = _tls_context(tls_cert, tls_key)
    _accounts(data_dir, database).close()  # fail here, with a clear message, not inside trio
    options.update(database=database, node_id=node_id, node_timeout=node_timeout)
    daemon.setup_logging(log_level)
    scheme = "wss" if tls else "ws"
    shown_host = f"[{host}]" if ":" in host else host
    run = functools.partial(
        _serve_until_signal,
        host,
        port,
        data_dir,
        tls,
        ping_interval,
        idle_timeout,
        options,
        lambda bound: f"relay listening on {scheme}://{shown_host}:{bound}",
    )
    import trio  # here, so account commands start fast

    try:
        trio.run(run)
    except* AccountError as group:  # the database went away between the check and the start
        raise ConfigError(str(first_leaf(group))) from None
    except* OSError as group:  # the listener fails inside the serving nursery
        exc = first_leaf(group)
        raise BindError(
            f"cannot listen on {bind}: {getattr(exc, 'strerror', None) or exc}: choose "
            "another --bind (port 0 picks a free one)"
        ) from None


class BindError(click.ClickException):
    """The address is taken or not ours: a configuration error (exit 2, docs/cli.md)."""

    exit_code = 2


async def _serve_until_signal(
    host: str,
    port: int,
    data_dir: Path,
    tls: ssl.SSLContext | None,
    ping_interval: float,
    idle_timeout: float,
    options: dict[str, Any],
    banner: Any,
) -> None:
    import trio

    from pio_remote.relay.server import serve

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(
                functools.partial(
                    serve,
                    host,
                    port,
                    data_dir,
                    tls=tls,
                    ping_interval=ping_interval,
                    idle_timeout=idle_timeout,
                    **options,
                )
            )
            daemon.say_ready(banner(bound))
            daemon.notify(f"READY=1\nSTATUS={banner(bound)}")
            async for signum in signals:
                daemon.notify("STOPPING=1")
                log.info("%s: shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


@relay_group.group("user")
def user_group() -> None:
    """Add, list and remove relay accounts."""


@user_group.command("add")
@click.argument("name")
@_data_dir_option
@database_option
def user_add(name: str, data_dir: Path, database: str | None) -> None:
    """Create account NAME and print its token (shown only this once)."""
    with _accounts(data_dir, database) as accounts:
        try:
            token = accounts.add(name)
        except AccountError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(token)


@user_group.command("list")
@_data_dir_option
@database_option
def user_list(data_dir: Path, database: str | None) -> None:
    """List accounts, one per line: NAME CREATED."""
    with _accounts(data_dir, database, create=False) as accounts:
        users = accounts.users()
    if not users:
        click.echo("no users yet: add one with 'pio-remote relay user add NAME'", err=True)
    for user in users:
        click.echo(f"{user.name}\t{user.created_at}")


@user_group.command("remove")
@click.argument("name")
@_data_dir_option
@database_option
def user_remove(name: str, data_dir: Path, database: str | None) -> None:
    """Delete account NAME; every running relay drops its connections within a second."""
    with _accounts(data_dir, database, create=False) as accounts:
        try:
            accounts.remove(name)
        except AccountError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"removed user {name!r}", err=True)


@relay_group.command("token")
@click.argument("name")
@click.option("--regenerate", is_flag=True, help="Issue a new token; the old one stops working.")
@_data_dir_option
@database_option
def token_command(name: str, regenerate: bool, data_dir: Path, database: str | None) -> None:
    """Issue a new token for NAME and print it (the old token is revoked)."""
    if not regenerate:
        raise click.UsageError(
            "tokens are stored only as hashes and cannot be shown again: "
            f"run 'pio-remote relay token {name} --regenerate' to issue a new one "
            "(the old one stops working)"
        )
    with _accounts(data_dir, database, create=False) as accounts:
        try:
            token = accounts.regenerate(name)
        except AccountError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(token)


relay_group.add_command(db_group)
