"""Agent calls for device leases: the trio shell around leases.LeaseBook.

    device.lock    {port, ttl?, note, wait}  -> with ttl: {lease, until, holder}
                   without ttl: EVENT {lease, until, holder}, then held until the
                   call ends (Ctrl-C, the client killed, the session lost)
    device.unlock  {port}                    -> {released: lease id}
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
from pio_remote.agent import gate, uploader
from pio_remote.agent.handlers import CallContext, CallFailed, handler
from pio_remote.agent.leases import MAX_TTL, SESSION_TTL, Busy, Granted, Lease, NotHeld
from pio_remote.agent.portlock import PortRegistry, when

if TYPE_CHECKING:
    from pio_remote.agent.service import AgentState

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


def busy_message(port: str, lease: Lease) -> str:
    note = f" ({lease.note})" if lease.note else ""
    return (
        f"port {port} is leased by {lease.holder}{note} until {when(lease.until)}: wait for it "
        "with --wait SECONDS, or ask the holder to run 'pio-remote device unlock -p PORT'"
    )


async def wait_until_free(
    registry: PortRegistry,
    port: str,
    wait: float,
    announce: Callable[[str], Awaitable[None]] | None = None,
) -> None:
    """Return once no lease keeps the caller off ``port``; fail after ``wait`` seconds.

    ``announce`` hears once that the call is waiting, and for whom.
    """
    deadline = trio.current_time() + wait
    announced = False
    while (lease := registry.blocking_lease(port)) is not None:
        left = deadline - trio.current_time()
        if left <= 0:
            raise CallFailed("port_leased", busy_message(port, lease))
        if announce is not None and not announced:
            announced = True
            note = f" ({lease.note})" if lease.note else ""
            await announce(
                f"waiting up to {wait:g} s for port {port}, leased by {lease.holder}{note} "
                f"until {when(lease.until)}"
            )
        with trio.move_on_after(min(left, max(0.0, lease.until - time.time()) + 0.05)):
            await registry.lease_changed.wait()


def check_wait(wait: object) -> float:
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= MAX_WAIT:
        raise CallFailed("bad_params", f"wait must be between 0 and {MAX_WAIT:g} seconds")
    return float(wait)


def _check_port(ctx: CallContext, port: object) -> str:
    """The lease key of a listed device, or of a network name an [[uploader]] claims."""
    if not isinstance(port, str) or not port:
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
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
        raise CallFailed("bad_params", "ttl must be a number of seconds")
    if ttl is not None and not 0 < ttl <= MAX_TTL:
        raise CallFailed("bad_params", f"ttl must be between 0 and {MAX_TTL:g} seconds")
    if not isinstance(note, str) or len(note) > 200:
        raise CallFailed("bad_params", "note must be text of at most 200 characters")
    port = _check_port(ctx, port)  # after the cheap checks: it lists the agent's ports
    registry = ctx.agent.ports
    caller = ctx.channel.caller
    await wait_until_free(registry, port, wait)
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
        raise CallFailed("port_leased", busy_message(port, decision.lease))
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
async def device_unlock(ctx: CallContext, port: str) -> dict[str, Any]:
    found = gate.offered_port(ctx.agent.config, port)
    port = found.key if found is not None else port  # a board unplugged since: as leased
    registry = ctx.agent.ports
    decision = registry.leases.release(port, ctx.channel.caller.key, time.time())
    if isinstance(decision, NotHeld):
        raise CallFailed("not_leased", f"port {port} has no lease")
    if isinstance(decision, Busy):
        raise CallFailed(
            "not_holder",
            f"port {port} is leased by {decision.lease.holder}, not by this client: "
            "only the holder can unlock it (or wait until it expires)",
        )
    registry.leases_changed()
    if decision.lease.detached:
        _save(ctx)
    return {"released": decision.lease.id}


@handler("lease.use")
async def lease_use(ctx: CallContext, lease: str) -> dict[str, Any]:
    """PIO_REMOTE_LEASE: this session acts under a lease its client key holds."""
    if not isinstance(lease, str) or not 0 < len(lease) <= 64:
        raise CallFailed("bad_params", "lease must be a lease id")
    ctx.channel.caller.presented.add(lease)
    return {}
