"""A client process that reads fast streams from an agent (``diag.source`` on many calls).

Started by the fairness test, which stops it (SIGSTOP) in the middle. It prints
"streaming" once data flows, and ends like every CLI command: an error is one
line on stderr and exit code 1. Usage: ``python streamclient.py AGENT CALLS``,
with PIO_REMOTE_HOME, PIO_REMOTE_RELAY and PIO_REMOTE_AUTH_TOKEN set.
"""

from __future__ import annotations

import sys

import trio

from pio_remote.cli.common import run
from pio_remote.client.api import Client

# Bytes read before saying "streaming"; every call is well under way by then.
STARTED_BYTES = 8 * 1024 * 1024
LIFETIME_S = 120.0  # never outlives a test run


async def stream(agent: str, calls: int) -> None:
    got = [0]
    with trio.fail_after(LIFETIME_S):
        async with Client.connect() as client, client.session(agent) as session:

            async def one() -> None:
                async with session.open_call("diag.source", size=1 << 34) as call:
                    while (item := await call.receive()) is not None:
                        if isinstance(item, bytes):
                            before = got[0]
                            got[0] += len(item)
                            if before < STARTED_BYTES <= got[0]:
                                print("streaming", flush=True)

            async with trio.open_nursery() as nursery:
                for _ in range(calls):
                    nursery.start_soon(one)


if __name__ == "__main__":
    run(stream, sys.argv[1], int(sys.argv[2]))
