"""The library users import: connect to a relay, open sessions with agents, and the
jobs built on them (upload, farm runs, reports, forwarding, the serial monitor).

    from pio_remote.client import Client
    async with Client.connect() as client: ...

The CLI is a thin layer over this package; see docs/api.md.
"""

from pio_remote.client.api import (
    AgentInfo,
    AgentSession,
    BadParamsError,
    Client,
    CommandFailedError,
    NoPowerControlError,
    PortBusyError,
    PortLeasedError,
    RemoteError,
    UnknownPortError,
    wait_result,
)
from pio_remote.client.boards import Lease, Port, UploadResult

__all__ = [
    "AgentInfo",
    "AgentSession",
    "BadParamsError",
    "Client",
    "CommandFailedError",
    "Lease",
    "NoPowerControlError",
    "Port",
    "PortBusyError",
    "PortLeasedError",
    "RemoteError",
    "UnknownPortError",
    "UploadResult",
    "wait_result",
]
