"""A click group whose subcommands are imported only when one of them runs.

`pio-remote --version` then loads click and nothing else, and `agent list`
never pays for the monitor, the relay or rich's progress bars.
"""

from __future__ import annotations

import importlib

import click


class LazyGroup(click.Group):
    """``lazy`` maps a command name to ``"module:attribute"``, imported on first use."""

    def __init__(self, *args: object, lazy: dict[str, str] | None = None, **kw: object):
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attr = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)
