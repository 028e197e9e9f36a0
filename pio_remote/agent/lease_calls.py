"""Agent calls for device leases: the trio shell around leases.LeaseBook.

    device.lock    {port, ttl?, note, wait}  -> with ttl: {lease, until, holder}
                   without ttl: EVENT {lease, until, holder}, then held until the
                   call ends (Ctrl-C, the client killed, the session lost)
    device.unlock  {port, force?}            -> {released: lease id}
                   force: break another client's lease (the agent's owner only:
                   its own key or one paired with `agent invite --owner`)
    lease.use      {lease}                   -> {} (this session may use that lease's port)

Detached leases (with ttl) are stored in ``<home>/leases.json`` (0600, written
through a temp file and a rename) whenever they change, and restored at start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from pio_remote import home
from pio_remote.agent import allowlist as trust
from pio_remote.agent import gate
from pio_remote.agent.handlers import CallContext, CallFailed, handler
from pio_remote.agent.jobs import uploader
from pio_remote.agent.leases import (
    MAX_TTL,
    SESSION_TTL,
    Busy,
    Granted,
    Lease,
    NotHeld,
    when,
)
from pio_remote.agent.serial.portlock import CALLER, PortBusy, PortRegistry
from pio_remote.wire import e2e

if TYPE_CHECKING:
    from pio_remote.agent.state import AgentState

log = logging.getLogger(__name__)

LEASES_FILE = "leases.json"
# Longest --wait the agent honours in one call: an hour is longer than any CI step
# should block, and the call stays cancellable throughout.
MAX_WAIT = 3600.0


def restore(agent: AgentState) -> None:
    saved = home.read_json(agent.home / LEASES_FILE, [])
    count = agent.ports.leases.restore(saved, time.time())
    if count:
        log.info("restored %d lease(s) taken with --ttl", count)


def _save(ctx: CallContext) -> None:
    home.write_json(ctx.agent.home / LEASES_FILE, ctx.agent.ports.leases.detached(time.time()))


def busy_message(
    port: str,
    lease: Lease,
    agent: str,
    *,
    waited: float = 0.0,
    can_wait: bool = True,
    yours: bool = False,
) -> str:
    """Why a lease keeps the caller off ``port``, and what to do about it: one line.

    ``waited``: the seconds --wait already waited; ``can_wait``: the command has a
    --wait option; ``yours``: the lease is the caller's own key's, taken without
    naming its id.
    """
    note = f" ({lease.note})" if lease.note else ""
    still, after = ("still ", f" after waiting {waited:g} s") if waited > 0 else ("", "")
    head = f"port {port} is {still}leased by {lease.holder}{note} until {when(lease.until)}{after}"
    unlock = f"'pio-remote -a {agent} device unlock -p {port}'"
    if yours:
        return (
            f"{head}: the lease is this client's; use it with PIO_REMOTE_LEASE=<lease id> "
            f"(the id 'device lock' printed), or end it with {unlock}"
        )
    if not can_wait:
        how = "wait until it ends"
    elif waited > 0:
        how = "wait longer with --wait SECONDS"
    else:
        how = "wait for it with --wait SECONDS"
    return f"{head}: {how}, or ask the holder to run {unlock}"


def busy_failure(agent: AgentState, exc: PortBusy, *, can_wait: bool = True) -> CallFailed:
    """A port someone else has, as the caller's error: the lease and its way out, or
    what holds the port."""
    if exc.lease is None:
        return CallFailed("port_busy", f"{exc} on agent '{agent.agent_id}'")
    yours = _callers(exc.lease)
    text = busy_message(exc.port, exc.lease, agent.agent_id, can_wait=can_wait, yours=yours)
    return CallFailed("port_leased", text)


def _callers(lease: Lease) -> bool:
    """Whether the running call's client key holds ``lease`` (without naming its id)."""
    caller = CALLER.get()
    return caller is not None and caller.key == lease.key


async def wait_until_free(
    registry: PortRegistry,
    agent: str,
    port: str,
    wait: float,
    announce: Callable[[str], Awaitable[None]] | None = None,
) -> None:
    """Return once no lease keeps the caller off ``port``; fail after ``wait`` seconds.

    ``agent`` is the agent's owner/name, for the unlock hint of the error.

    ``announce`` hears once that the call is waiting, and for whom (the client
    prefixes the board, ``AGENT:PORT: ``, as on every per-board line).
    """
    deadline = trio.current_time() + wait
    announced = False
    while (lease := registry.blocking_lease(port)) is not None:
        left = deadline - trio.current_time()
        if left <= 0:
            text = busy_message(port, lease, agent, waited=wait, yours=_callers(lease))
            raise CallFailed("port_leased", text)
        if announce is not None and not announced:
            announced = True
            note = f" ({lease.note})" if lease.note else ""
            await announce(
                f"waiting up to {wait:g} s: leased by {lease.holder}{note} "
                f"until {when(lease.until)}"
            )
        with trio.move_on_after(min(left, max(0.0, lease.until - time.time()) + 0.05)):
            await registry.lease_changed.wait()


def announcer(ctx: CallContext) -> Callable[[str], Awaitable[None]]:
    """Tells the waiting client, as an event of its call, whom it waits for."""

    async def announce(text: str) -> None:
        await ctx.call.send_event({"waiting": text})

    return announce


def check_wait(wait: float) -> float:
    if not 0 <= wait <= MAX_WAIT:
        raise CallFailed("bad_params", f"wait must be between 0 and {MAX_WAIT:g} seconds")
    return float(wait)


def _check_port(ctx: CallContext, port: str) -> str:
    """The lease key of a listed device, or of a network name an [[uploader]] claims."""
    if not port:
        raise CallFailed("bad_params", "give the port to lock")
    config = ctx.agent.config
    found = gate.offered_port(config, port)
    if found is not None and (found.device or uploader.matching_uploader(config, port)):
        return found.key
    raise CallFailed(
        "unknown_port",
        f"port {port} is not offered by agent '{ctx.agent.agent_id}': see "
        "'pio-remote device list' for its ports",
    )


@handler("device.lock")
async def device_lock(
    ctx: CallContext, port: str, ttl: float | None = None, note: str = "", wait: float = 0
) -> dict[str, Any]:
    wait = check_wait(wait)
    if ttl is not None and not 0 < ttl <= MAX_TTL:
        raise CallFailed("bad_params", f"ttl must be between 0 and {MAX_TTL:g} seconds")
    if len(note) > 200:
        raise CallFailed("bad_params", "note must be text of at most 200 characters")
    port = _check_port(ctx, port)  # after the cheap checks: it lists the agent's ports
    registry = ctx.agent.ports
    caller = ctx.channel.caller
    await wait_until_free(registry, ctx.agent.agent_id, port, wait, announcer(ctx))
    decision = registry.leases.acquire(
        port,
        ctx.channel.holder,
        caller.key,
        time.time(),
        ttl or SESSION_TTL,
        detached=ttl is not None,
        note=note,
    )
    if isinstance(decision, Busy):  # taken while we were told it was free: same answer
        yours = decision.lease.key == caller.key
        text = busy_message(port, decision.lease, ctx.agent.agent_id, waited=wait, yours=yours)
        raise CallFailed("port_leased", text)
    assert isinstance(decision, Granted)
    lease = decision.lease
    caller.presented.add(lease.id)
    reply = {"lease": lease.id, "until": lease.until, "holder": lease.holder, "port": port}
    log.info("lease %s on %s for %s", lease.id, port, lease.holder)
    if ttl is not None:
        _save(ctx)
        return reply
    try:
        await ctx.call.send_event(reply)
        while True:  # held by this call: renewed while it lives
            await trio.sleep(SESSION_TTL / 3)
            renewed = registry.leases.renew(lease, time.time(), SESSION_TTL)
            if renewed is None:
                raise CallFailed("lease_lost", f"the lease on {port} was released")
            lease = renewed
    finally:
        if registry.leases.drop(lease) is not None:
            log.info("lease %s on %s ended with its session", lease.id, port)
            registry.leases_changed()


@handler("device.unlock")
async def device_unlock(ctx: CallContext, port: str, force: bool = False) -> dict[str, Any]:
    # The owner is a role in the agent's allow-list, never the relay's account name.
    if force and ctx.channel.role != trust.OWNER:
        raise CallFailed(
            "not_owner",
            f"only the owner of agent '{ctx.agent.agent_id}' may break another client's "
            f"lease, and this client (key {e2e.fingerprint(ctx.channel.client_key)}) is "
            "paired as a client: ask the holder, or wait until the lease expires",
        )
    found = gate.offered_port(ctx.agent.config, port)
    port = found.key if found is not None else port  # a board unplugged since: as leased
    registry = ctx.agent.ports
    decision = registry.leases.release(port, ctx.channel.caller.key, time.time(), force=force)
    if isinstance(decision, NotHeld):
        raise CallFailed("not_leased", f"port {port} has no lease")
    if isinstance(decision, Busy):
        raise CallFailed(
            "not_holder",
            f"port {port} is leased by {decision.lease.holder}, not by this client: "
            "only the holder can unlock it (or wait until it expires)",
        )
    if decision.lease.key != ctx.channel.caller.key:
        log.warning(
            "lease %s on %s held by %s broken by the owner's key %s",
            decision.lease.id,
            port,
            decision.lease.holder,
            ctx.channel.caller.key,
        )
    registry.leases_changed()
    if decision.lease.detached:
        _save(ctx)
    return {"released": decision.lease.id}


@handler("lease.use")
async def lease_use(ctx: CallContext, lease: str) -> dict[str, Any]:
    """PIO_REMOTE_LEASE: this session acts under a lease its client key holds."""
    if not 0 < len(lease) <= 64:
        raise CallFailed("bad_params", "lease must be a lease id")
    ctx.channel.caller.presented.add(lease)
    return {}
