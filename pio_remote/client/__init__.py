"""The library users import: connect to a relay, open sessions with agents, and the
jobs built on them (upload, farm runs, reports, forwarding, the serial monitor).

    from pio_remote.client import Client
    async with Client.connect() as client: ...

The CLI is a thin layer over this package; see docs/api.md.
"""

from pio_remote.client.api import (
    AgentInfo,
    AgentSession,
    Client,
    RemoteError,
    wait_result,
)

__all__ = ["AgentInfo", "AgentSession", "Client", "RemoteError", "wait_result"]
