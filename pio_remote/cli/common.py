"""What every command shares: options, running trio, and turning errors into messages."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import click
import trio
from rich.console import Console

from pio_remote.channel import ChannelClosed
from pio_remote.client import RemoteError
from pio_remote.home import ConfigError
from pio_remote.link import RelayError
from pio_remote.trust import TrustError

USER_ERRORS = (RemoteError, RelayError, ConfigError, TrustError, ChannelClosed)


def console(stderr: bool = False) -> Console:
    """Rich output that never wraps or truncates when a script reads it."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=10_000, soft_wrap=True, no_color=True)


@dataclass
class Options:
    agents: list[str] = field(default_factory=list)


def _leaf(exc: BaseException) -> BaseException:
    """The first user-facing error inside (possibly nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            leaf = _leaf(inner)
            if isinstance(leaf, USER_ERRORS):
                return leaf
        return _leaf(exc.exceptions[0])
    return exc


def run(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run a coroutine under trio; user errors become one line on stderr and exit 1."""
    try:
        return trio.run(fn, *args)
    except KeyboardInterrupt:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except BaseException as exc:
        leaf = _leaf(exc)
        if isinstance(leaf, USER_ERRORS):
            click.echo(f"Error: {leaf}", err=True)
            sys.exit(1)
        if isinstance(leaf, KeyboardInterrupt):
            click.echo("Aborted.", err=True)
            sys.exit(130)
        if isinstance(leaf, SystemExit):
            raise leaf from None
        raise
