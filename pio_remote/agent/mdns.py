"""Agent call ``device.mdns``: network devices this agent sees over mDNS/DNS-SD
(`pio device list --mdns`, remotely).

Boards that flash over the air (ESP8266/ESP32 ArduinoOTA, for example)
announce themselves as ``_arduino._tcp``; listing them on the agent tells the
user which name or address to give ``--upload-port``. The browsing itself
(zeroconf) is in mdnsbrowse.py, imported on the first call.
"""

from __future__ import annotations

from typing import Any

import trio

from pio_remote.agent.handlers import CallContext, CallFailed, handler

DEFAULT_TIMEOUT = 3.0  # as mdnsbrowse.DEFAULT_TIMEOUT, without importing zeroconf
MAX_TIMEOUT = 10.0


@handler("device.mdns")
async def device_mdns(ctx: CallContext, timeout: float = DEFAULT_TIMEOUT) -> list[Any]:
    if not 0 < timeout <= MAX_TIMEOUT:
        raise CallFailed("bad_params", f"timeout must be between 0 and {MAX_TIMEOUT:g} s")
    try:
        from pio_remote.agent.mdnsbrowse import browse
    except ImportError as exc:
        raise CallFailed(
            "mdns_failed",
            f"agent '{ctx.agent.agent_id}' cannot browse mDNS: {exc} (on a Pi: sudo apt "
            "install python3-zeroconf; the linux-armv6 single file does not carry zeroconf)",
        ) from None
    try:
        return await trio.to_thread.run_sync(browse, timeout, abandon_on_cancel=True)
    except OSError as exc:
        raise CallFailed("mdns_failed", f"mDNS browsing failed on the agent: {exc}") from None
