"""Agent call ``device.mdns``: the network devices this agent sees (see pio_remote/mdns.py)."""

from __future__ import annotations

from typing import Any

import trio

from pio_remote import mdns
from pio_remote.agent.handlers import CallContext, CallFailed, handler

MAX_TIMEOUT = 10.0


@handler("device.mdns")
async def device_mdns(ctx: CallContext, timeout: float = mdns.DEFAULT_TIMEOUT) -> list[Any]:
    if not 0 < timeout <= MAX_TIMEOUT:
        raise CallFailed("bad_params", f"timeout must be between 0 and {MAX_TIMEOUT:g} s")
    try:
        return await trio.to_thread.run_sync(mdns.browse, timeout, abandon_on_cancel=True)
    except OSError as exc:
        raise CallFailed("mdns_failed", f"mDNS browsing failed on the agent: {exc}") from None
