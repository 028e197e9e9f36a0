"""The CLI's commands as a list, for tests that check each one (help texts, option errors)."""

from __future__ import annotations

from collections.abc import Iterator

import click


def leaf_commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command that is not a group, with its path (``("device", "list")``)."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*path, name))
        elif command is not None:
            yield (*path, name), command
