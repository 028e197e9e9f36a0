"""The call registry: every method an agent answers, and the handler that answers it.

An explicit table, so the agent serves what is listed here and not whatever modules
happen to be imported. Each handler names its own method with ``@handler``.
"""

from __future__ import annotations

from collections.abc import Iterable

from pio_remote.agent import forward, handlers, lease_calls, mdns, pairing, update
from pio_remote.agent.handlers import Handler, method_of
from pio_remote.agent.jobs import flash, projects, staging, testbuild, testrun
from pio_remote.agent.serial import control, monitor

SERVED: tuple[Handler, ...] = (
    handlers.agent_info,
    handlers.device_list,
    handlers.diag_echo,
    handlers.diag_sink,
    handlers.diag_source,
    pairing.pair_confirm,
    lease_calls.device_lock,
    lease_calls.device_unlock,
    lease_calls.lease_use,
    mdns.device_mdns,
    forward.forward_list,
    forward.forward_tcp,
    monitor.monitor_open,
    control.device_reset,
    control.device_power,
    staging.upload_check,
    staging.upload_put,
    flash.upload_flash,
    projects.project_index,
    projects.project_sync,
    testbuild.test_build,
    testrun.test_boards,
    testrun.test_run,
    update.agent_update,
)


def build(served: Iterable[Handler]) -> dict[str, Handler]:
    """Method name to handler; a TypeError for an unnamed handler or a name used twice."""
    table: dict[str, Handler] = {}
    for fn in served:
        method = method_of(fn)
        if method is None:
            raise TypeError(f"{fn.__module__}.{fn.__qualname__} has no @handler name")
        if method in table:
            raise TypeError(f"{method} is answered by two handlers")
        table[method] = fn
    return table


HANDLERS: dict[str, Handler] = build(SERVED)
