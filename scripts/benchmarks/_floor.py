"""The floor for `scripts/bench e2e`: three bare trio processes, no WebSocket, no Noise.

client -> forwarder -> server -> forwarder -> client over TCP on loopback, the
same shape as client -> relay -> agent, with each process doing the least a
trio program can: one task per direction in the forwarder, read then write.
What pio-remote costs above this is what our own code adds (framing,
encryption, routing, sessions); what this costs is the price of three Python
processes and their schedulers, which no change of ours can remove.

The server takes one mode byte: ``E`` echoes, ``S`` counts bytes to EOF and
answers the count (8 bytes, big-endian), ``R`` + 8-byte count sends that many
zero bytes.

Also runnable on its own (the e2e benchmark starts it this way):
``python _floor.py server`` and ``python _floor.py forward PORT`` each print
``floor listening on PORT``.
"""

from __future__ import annotations

import sys
from time import perf_counter

import floor  # the same hop as `scripts/bench forward`'s floor chain
import trio

BLOCK = 1024 * 1024
READ_BYTES = 256 * 1024
READY = r"floor listening on (\d+)"


async def _exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise RuntimeError("floor peer closed early")
        data += chunk
    return data


# ---- the two server processes ---------------------------------------------------------


async def _serve_one(stream: trio.SocketStream) -> None:
    async with stream:
        mode = await _exactly(stream, 1)
        if mode == b"E":
            while data := await stream.receive_some(READ_BYTES):
                await stream.send_all(data)
        elif mode == b"S":
            total = 0
            while data := await stream.receive_some(READ_BYTES):
                total += len(data)
            await stream.send_all(total.to_bytes(8, "big"))
        elif mode == b"R":
            left = int.from_bytes(await _exactly(stream, 8), "big")
            block = bytes(BLOCK)
            while left:
                n = min(left, BLOCK)
                await stream.send_all(block[:n])
                left -= n


async def _forward_one(backend: int, client: trio.SocketStream) -> None:
    await floor.splice(client, backend)


async def _listen(handler, *args: object) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(f"floor listening on {listeners[0].socket.getsockname()[1]}", flush=True)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await handler(*args, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, RuntimeError):
            pass

    await trio.serve_listeners(handle, listeners)


def serve(argv: list[str]) -> None:
    if argv[:1] == ["server"]:
        trio.run(_listen, _serve_one)
    elif argv[:1] == ["forward"]:
        trio.run(_listen, _forward_one, int(argv[1]))
    else:
        raise SystemExit("usage: _floor.py server | _floor.py forward PORT")


# ---- the client (runs in the benchmark's own trio process) ----------------------------


async def sink(port: int, nbytes: int) -> float:
    """Seconds to push ``nbytes`` through and have the far end confirm its count."""
    block = bytes(BLOCK)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"S")
        start = perf_counter()
        left = nbytes
        while left:
            n = min(left, BLOCK)
            await stream.send_all(block if n == BLOCK else block[:n])
            left -= n
        await stream.send_eof()
        total = int.from_bytes(await _exactly(stream, 8), "big")
        elapsed = perf_counter() - start
    if total != nbytes:
        raise RuntimeError(f"floor sink counted {total} of {nbytes} bytes")
    return elapsed


async def source(port: int, nbytes: int) -> float:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"R" + nbytes.to_bytes(8, "big"))
        start = perf_counter()
        got = 0
        while got < nbytes and (chunk := await stream.receive_some(READ_BYTES)):
            got += len(chunk)
        elapsed = perf_counter() - start
    if got != nbytes:
        raise RuntimeError(f"floor source gave {got} of {nbytes} bytes")
    return elapsed


async def echo(port: int, count: int, warmup: int, size: int) -> list[float]:
    message = bytes(range(size))
    times = []
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"E")
        for i in range(warmup + count):
            start = perf_counter()
            await stream.send_all(message)
            await _exactly(stream, size)
            if i >= warmup:
                times.append(perf_counter() - start)
    return times


if __name__ == "__main__":
    serve(sys.argv[1:])
