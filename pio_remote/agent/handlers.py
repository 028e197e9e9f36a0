"""Agent call handlers: what each takes and how its parameters are checked.

A handler is ``async def handler(ctx, name: type = default, ...) -> JSON value``;
it raises ``CallFailed`` for errors the user should read. Its parameters'
annotations are the call's schema: ``bind_params`` checks a CALL's params
against them (schema.py, which checks agent.toml too) before the handler runs,
so a handler never sees a string where it declared an int (the client gets
``bad_params`` naming the parameter). Streaming
handlers use ``ctx.call`` to send and receive bytes. Handlers never run a command
line a client sent unless the agent's owner allowed it (see uploader.py).
``@handler`` names the method a function answers; registry.py lists the handlers
the agent serves.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pio_remote import __version__
from pio_remote.agent import schema
from pio_remote.agent.serial import ports
from pio_remote.wire import session

if TYPE_CHECKING:
    from pio_remote.agent.state import AgentChannel, AgentState
    from pio_remote.net.channel import Call


class CallFailed(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class CallContext:
    agent: AgentState
    channel: AgentChannel
    call: Call


Handler = Callable[..., Awaitable[Any]]
# Where ``@handler`` keeps the method name on the function.
_METHOD = "agent_call_method"


def handler(name: str) -> Callable[[Handler], Handler]:
    """Name the call a function answers. Naming serves nothing: registry.py does."""

    def name_it(fn: Handler) -> Handler:
        setattr(fn, _METHOD, name)
        return fn

    return name_it


def method_of(fn: Handler) -> str | None:
    """The method ``@handler`` named for ``fn``, or None for a function it never saw."""
    name = getattr(fn, _METHOD, None)
    return name if isinstance(name, str) else None


@functools.cache
def param_spec(fn: Handler) -> dict[str, schema.Field]:
    """A handler's parameters after ``ctx``, with their declared types."""
    return schema.function_fields(fn, skip=1)


def bind_params(fn: Handler, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The CALL's params checked against the handler's declared types, or ``bad_params``."""
    try:
        return schema.check_table(param_spec(fn), params)
    except schema.UnknownKey as exc:
        hint = schema.suggest(exc.key, exc.known)
        known = ", ".join(exc.known) or "none"
        message = f"unknown parameter '{exc.key}'{hint} (takes: {known})"
    except schema.MissingKey as exc:
        message = f"missing parameter '{exc.name}'"
    except schema.WrongType as exc:
        message = f"parameter '{exc.key}' must be {exc.expected}, not {schema.show(exc.value)}"
    raise CallFailed("bad_params", f"{method}: {message}")


@handler("agent.info")
async def agent_info(ctx: CallContext) -> dict[str, Any]:
    agent = ctx.agent
    return {
        "agent": agent.agent_id,
        "version": __version__,
        "key": agent.identity.public.hex(),
        "sessions": agent.sessions,
        "allow_client_commands": agent.config.allow_client_commands,
    }


@handler("device.list")
async def device_list(ctx: CallContext) -> list[dict[str, Any]]:
    """PlatformIO's shape, plus ``lease: {holder, until, note}`` on ports someone holds,
    ``power``/``reset`` (control.describe) and ``flashed_sha256`` once the agent flashed it."""
    from pio_remote.agent.serial import control

    config = ctx.agent.config
    devices: list[dict[str, Any]] = ports.list_devices(ports.offered_globs(config))
    keys = ports.device_keys(dev["port"] for dev in devices)
    for dev in devices:
        key = keys[dev["port"]]
        info = ctx.agent.ports.lease_info(key)
        if info is not None:
            dev["lease"] = info
        dev.update(control.describe(config, dev["port"]))
        if key in ctx.agent.flashed:
            dev["flashed_sha256"] = ctx.agent.flashed[key]
    return devices


# ---- diagnostics: link latency and throughput (`scripts/bench`, health checks) ----------

DIAG_MAX_SOURCE = 1 << 34


@handler("diag.echo")
async def diag_echo(ctx: CallContext) -> int:
    """Send back every byte until the client's EOF: round-trip time through the relay."""
    total = 0
    while (item := await ctx.call.receive()) is not None:
        if isinstance(item, bytes):
            await ctx.call.send(item)
            total += len(item)
    return total


@handler("diag.sink")
async def diag_sink(ctx: CallContext) -> int:
    """Swallow bytes until EOF and say how many: client-to-agent throughput."""
    total = 0
    while (item := await ctx.call.receive()) is not None:
        if isinstance(item, bytes):
            total += len(item)
    return total


@handler("diag.source")
async def diag_source(ctx: CallContext, size: int) -> int:
    """Send ``size`` bytes: agent-to-client throughput."""
    if not 0 <= size <= DIAG_MAX_SOURCE:
        raise CallFailed("bad_params", f"size must be between 0 and {DIAG_MAX_SOURCE}")
    # A multiple of the session's message body: 64 KiB would go out as one full
    # message and one of 22 bytes, doubling the per-message cost.
    block = bytes(session.MAX_BODY * 16)
    left = size
    while left:
        n = min(left, len(block))
        await ctx.call.send(block[:n])
        left -= n
    await ctx.call.send_eof()
    return size
