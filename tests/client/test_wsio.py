"""The endpoints' socket shell: whole frames in order, a stall limit per write (not per writer)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from websockets.client import ClientProtocol
from websockets.protocol import OPEN
from websockets.uri import parse_uri

from pio_remote.net import wsio
from pio_remote.relay import http
from pio_remote.relay.websocket import ServerSocket


class SlowStream(trio.abc.Stream):
    """Takes every write, ``delay`` seconds after it is offered."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.data = bytearray()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.sleep(self.delay)
        self.data += data

    async def wait_send_all_might_not_block(self) -> None:
        pass

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()
        return b""

    async def aclose(self) -> None:
        pass


def client_ws(stream: trio.abc.Stream) -> wsio.ClientWebSocket:
    proto = ClientProtocol(parse_uri("ws://relay/v1/client"), state=OPEN, max_size=70000)
    return wsio.ClientWebSocket(stream, proto, [])


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_busy_writer_is_not_taken_for_a_stalled_one(autojump_clock) -> None:
    """One task writes for three others for far longer than the stall limit: no stall."""
    stream = SlowStream(delay=1.0)
    ws = client_ws(stream)
    sent = []

    async def sender(tag: int) -> None:
        for n in range(80):
            message = bytes([tag, n]) * 30000
            await ws.send(message)
            sent.append(message)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for tag in range(4):
            nursery.start_soon(sender, tag)
    assert trio.current_time() - start > 1.5 * wsio.SEND_STALL_TIMEOUT
    assert not ws.stalled
    # Every frame arrives whole and in the order the senders framed them.
    server = ServerSocket(70000)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    server.proto.receive_data(
        b"GET /v1/client HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        + f"Sec-WebSocket-Key: {key}\r\n\r\n".encode()
    )
    (request,) = server.proto.events_received()
    assert http.upgrade(server, request)[1]
    got = [payload for _, payload in server.feed(bytes(stream.data))]
    assert sorted(got) == sorted(sent) and len(got) == 320
    for tag in range(4):
        mine = [m for m in got if m[0] == tag]
        assert mine == [bytes([tag, n]) * 30000 for n in range(80)]


async def test_a_write_that_takes_too_long_is_a_stall(autojump_clock) -> None:
    ws = client_ws(SlowStream(delay=wsio.SEND_STALL_TIMEOUT + 1))
    with pytest.raises(wsio.Closed, match="accepted nothing"):
        await ws.send(b"x")
    assert ws.stalled
