"""Agent call handlers, registered by method name.

A handler is ``async def handler(ctx, **params) -> JSON value``; it raises
``CallFailed`` for errors the user should read. Streaming handlers use
``ctx.call`` to send and receive bytes. Handlers never run a command line a
client sent unless the agent's owner allowed it (see uploader.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pio_remote import __version__, session, trust
from pio_remote.agent import ports

if TYPE_CHECKING:
    from pio_remote.agent.service import AgentChannel, AgentState
    from pio_remote.channel import Call


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
async def device_list(ctx: CallContext) -> list[dict[str, str]]:
    return ports.list_devices(ctx.agent.config.port_globs)


@handler("pair.confirm")
async def pair_confirm(ctx: CallContext, label: str = "") -> dict[str, str]:
    """The client proved it holds the invite secret by getting this call through."""
    invite_id = ctx.channel.pairing_invite
    if invite_id is None:
        return {"agent": ctx.agent.agent_id}
    if trust.invite_secret(ctx.agent.home, invite_id) is None:
        raise CallFailed("invite_used", "this invite was used by someone else meanwhile")
    trust.consume_invite(ctx.agent.home, invite_id)
    trust.authorize_client(ctx.agent.home, ctx.channel.client_key, label or "unnamed")
    return {"agent": ctx.agent.agent_id}


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
