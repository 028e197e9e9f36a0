"""The floor: bare trio processes forwarding TCP in a chain, no framing, no crypto.

pio-remote's path is three trio processes (client, relay, agent), so whatever
three trio processes that only copy bytes cost is out of reach for it; a
benchmark that compares against this floor measures what our protocol layers
add, not what Python and trio cost. ``floor_chain(port)`` starts the hops as
real processes and yields the front port:

    bench -> hop 1 -> hop 2 -> hop 3 -> 127.0.0.1:port

Run as ``python floor.py hop NEXT_PORT``, one process is one hop: it prints
``hop on PORT`` and forwards each accepted connection to NEXT_PORT, both ways,
with half-closes passed on. It exits by itself after ``HOP_LIFETIME_S``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio
from harness import rig

HOPS = 3
# A socket read of this size, like the relay's (see pio_remote/relay/websocket.py).
READ_SIZE = 256 * 1024
HOP_LIFETIME_S = 600.0


@contextmanager
def floor_chain(target_port: int, hops: int = HOPS) -> Iterator[int]:
    """Start ``hops`` forwarding processes in front of ``target_port``; yield the first's port."""
    tmp = Path(tempfile.mkdtemp(prefix="pio-bench-floor-"))
    procs: list[rig.Proc] = []
    try:
        port = target_port
        for i in range(hops):
            proc = rig.Proc(
                [rig.PY, str(Path(__file__).resolve()), "hop", str(port)],
                rig.child_env(),
                tmp / f"hop{i}.log",
            )
            procs.append(proc)
            port = int(proc.wait_for(r"hop on (\d+)").group(1))
        yield port
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def _copy(src: trio.SocketStream, dst: trio.SocketStream) -> None:
    try:
        while data := await src.receive_some(READ_SIZE):
            await dst.send_all(data)
        await dst.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def splice(inbound: trio.SocketStream, next_port: int) -> None:
    """Forward one accepted connection to ``next_port``, both ways, half-closes passed on:
    the whole work of one hop (also ``_floor.py``'s forwarder for ``scripts/bench e2e``)."""
    async with inbound, await trio.open_tcp_stream(rig.LOCALHOST, next_port) as out:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_copy, inbound, out)
            await _copy(out, inbound)


async def _hop(next_port: int) -> None:
    async def handle(inbound: trio.SocketStream) -> None:
        await splice(inbound, next_port)

    listeners = await trio.open_tcp_listeners(0, host=rig.LOCALHOST)
    print(f"hop on {listeners[0].socket.getsockname()[1]}", flush=True)
    with trio.move_on_after(HOP_LIFETIME_S):
        await trio.serve_listeners(handle, listeners)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "hop":
        trio.run(_hop, int(sys.argv[2]))
    else:
        sys.exit("usage: floor.py hop NEXT_PORT")
