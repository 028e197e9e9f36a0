"""Agent call handlers, registered by method name.

A handler is ``async def handler(ctx, name: type = default, ...) -> JSON value``;
it raises ``CallFailed`` for errors the user should read. Its parameters'
annotations are the call's schema: ``bind_params`` checks a CALL's params
against them before the handler runs, so a handler never sees a string where it
declared an int (the client gets ``bad_params`` naming the parameter). Streaming
handlers use ``ctx.call`` to send and receive bytes. Handlers never run a command
line a client sent unless the agent's owner allowed it (see uploader.py).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from pio_remote import __version__
from pio_remote.agent.serial import ports
from pio_remote.wire import session

if TYPE_CHECKING:
    from pio_remote.agent.service import AgentChannel, AgentState
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
HANDLERS: dict[str, Handler] = {}


def handler(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        return fn

    return register


@dataclass(frozen=True)
class Param:
    kind: Any
    required: bool


@functools.cache
def param_spec(fn: Handler) -> dict[str, Param]:
    """A handler's parameters after ``ctx``, with their declared types."""
    hints = typing.get_type_hints(fn)
    spec = {}
    for name, p in list(inspect.signature(fn).parameters.items())[1:]:
        if p.kind is not p.POSITIONAL_OR_KEYWORD and p.kind is not p.KEYWORD_ONLY:
            raise TypeError(f"handler {fn.__name__}: parameter {name} must be a named one")
        _describe(hints[name])  # every declared type has a checker (TypeError if not)
        spec[name] = Param(hints[name], p.default is p.empty)
    return spec


def bind_params(fn: Handler, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The CALL's params checked against the handler's declared types, or ``bad_params``."""
    spec = param_spec(fn)
    for name in params:
        if name not in spec:
            known = ", ".join(spec) or "none"
            raise CallFailed("bad_params", f"{method}: unknown parameter '{name}' (takes: {known})")
    for name, p in spec.items():
        if name not in params:
            if p.required:
                raise CallFailed("bad_params", f"{method}: missing parameter '{name}'")
        elif not _conforms(p.kind, params[name]):
            raise CallFailed(
                "bad_params", f"{method}: parameter '{name}' must be {_describe(p.kind)}"
            )
    return params


def _conforms(kind: Any, value: object) -> bool:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return True
    if kind is None or kind is type(None):
        return value is None
    if origin in (Union, types.UnionType):
        return any(_conforms(a, value) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_conforms(args[0], v) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            isinstance(k, str) and _conforms(args[1], v) for k, v in value.items()
        )
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    raise TypeError(f"no checker for parameter type {kind!r}")


def _describe(kind: Any) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return "any JSON value"
    if kind is None or kind is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return f"a list of ({_describe(args[0])})"
    if origin is dict:
        return f"an object of ({_describe(args[1])})"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if kind not in names:
        raise TypeError(f"no checker for parameter type {kind!r}")
    return names[kind]


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
