"""Reading trio's exception groups: what a user is shown is one error, not the group.

Imports no trio at module level: cli/common.py uses ``leaves`` on every start.
"""

from __future__ import annotations

from collections.abc import Iterator


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """Every exception inside (nested) groups, in order; a plain exception is its own leaf."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The error that matters in a nursery's group; the group itself if it is all Cancelled.

    Cancelled must travel on unchanged (as the group), or the cancel scope that
    raised it would not recognise it.
    """
    import trio

    return next((e for e in leaves(group) if not isinstance(e, trio.Cancelled)), group)
