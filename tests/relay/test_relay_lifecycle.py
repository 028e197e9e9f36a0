"""Timeouts, keepalive, shutdown, TLS, the in-process API and import hygiene."""

from __future__ import annotations

import functools
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from proctools import tls_files
from relay_testkit import agent, client, http_get, wire

from pio_remote.relay.accounts import Accounts
from pio_remote.relay.limits import Limits
from pio_remote.relay.server import serve
from pio_remote.wire.envelope import FrameType


async def test_in_process_api_hello_deadline_and_keepalive(tmp_path: Path) -> None:
    with Accounts(tmp_path) as accounts:
        token = accounts.add("alice")
    async with trio.open_nursery() as nursery:
        start = functools.partial(
            serve,
            "127.0.0.1",
            0,
            tmp_path,
            ping_interval=0.2,
            idle_timeout=0.6,
            limits=Limits(hello_timeout=0.3),
        )
        port = await nursery.start(start)
        url = f"ws://127.0.0.1:{port}"
        assert await http_get(port, "/healthz") == (200, "ok\n")
        async with wire(url, token, "client") as mute:
            await mute.expect_error("hello_timeout", timeout=3)
            assert await mute.closed() == 4408
        async with client(url, token) as lively, client(url, token) as silent:
            # `lively` answers the relay's PINGs (Wire.recv does); `silent` never speaks.
            with trio.move_on_after(1.2):
                await lively.recv(timeout=5)
            assert await silent.closed(timeout=3) == 4408
            await lively.send(FrameType.PING, 0, b"alive?")
            assert (await lively.expect(FrameType.PONG)).payload == b"alive?"
        nursery.cancel_scope.cancel()


async def test_sigterm_stops_cleanly_and_says_so(start_relay, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Accounts(data) as accounts:
        token = accounts.add("alice")
    proc = start_relay(data)
    async with agent(proc.url, token, "lab-pi") as agt:
        proc.proc.send_signal(signal.SIGTERM)
        body = await agt.expect_error("shutdown")
        assert "shutting down" in body["message"]
        assert await agt.closed() == 1001
    returncode = await trio.to_thread.run_sync(functools.partial(proc.proc.wait, 10))
    assert returncode == 0, proc.log()
    assert "SIGTERM: shutting down" in proc.log()


async def test_tls(start_relay, tmp_path: Path) -> None:
    cert, key, ca = tls_files(tmp_path, "127.0.0.1")
    data = tmp_path / "data"
    with Accounts(data) as accounts:
        token = accounts.add("alice")
    proc = start_relay(data, ["--tls-cert", str(cert), "--tls-key", str(key)])
    assert proc.url.startswith("wss://127.0.0.1:")
    context = ssl.create_default_context(cafile=str(ca))
    async with wire(proc.url, token, "agent", ssl_context=context) as agt:
        await agt.hello_agent("lab-pi")
        async with wire(proc.url, token, "client", ssl_context=context) as cli:
            await cli.hello_client()
            await cli.send(FrameType.OPEN, 1, b"lab-pi")
            await cli.expect(FrameType.OPENED)
            aid = (await agt.expect(FrameType.OPEN)).channel
            await cli.send(FrameType.DATA, 1, b"x" * 60000)
            assert (await agt.expect(FrameType.DATA)).channel == aid
    tcp = await trio.open_tcp_stream("127.0.0.1", proc.port)
    tls = trio.SSLStream(tcp, context, server_hostname="127.0.0.1")
    async with tls:
        await tls.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        with trio.fail_after(5):
            while chunk := await tls.receive_some():
                reply += chunk
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"\r\n\r\nok\n")


def test_relay_imports_no_noise_serial_or_agent_code() -> None:
    check = (
        "import sys, pio_remote.relay.server, pio_remote.cli.relay_cmds\n"
        "import pio_remote.relay.__main__\n"
        # the relay is blind: no end-to-end crypto, no sessions, no serial, no agent or client
        "banned = ('pio_remote.agent', 'pio_remote.client', 'pio_remote.vboard',\n"
        "          'pio_remote.wire.e2e', 'pio_remote.wire.session', 'pio_remote.net.channel')\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] in ('noise', 'serial', 'cryptography')\n"
        "             or m.startswith(banned))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("role", ["agent", "client"])
async def test_pipelined_hello_in_the_upgrade_packet(relay, tokens, role: str) -> None:
    """A peer may send frames right behind the request head, in the same packet."""
    import base64
    import os

    from pio_remote.wire import envelope

    stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
    async with stream:
        hello = {"version": 1, "role": role}
        if role == "agent":
            hello |= {"name": "pipelined", "key": "cd" * 32}
        frame = envelope.encode_json(FrameType.HELLO, 0, hello)
        mask = os.urandom(4)
        ws = bytes((0x82, 0x80 | 126)) + len(frame).to_bytes(2, "big") + mask
        ws += bytes(b ^ mask[i % 4] for i, b in enumerate(frame))
        head = (
            f"GET /v1/{role} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            f"Authorization: Bearer {tokens['carol']}\r\n\r\n"
        )
        await stream.send_all(head.encode() + ws)
        reply = b""
        with trio.fail_after(5):
            while b"max_frame" not in reply:
                reply += await stream.receive_some()
        assert reply.startswith(b"HTTP/1.1 101 ")
        assert b'"account":"carol"' in reply


async def _upgrade_with_early(port: int, token: str, frames: list[bytes]) -> bytes:
    """An upgrade request carrying ``frames`` in X-Pio-Early; all the relay answers."""
    import base64
    import os

    early = " ".join(base64.urlsafe_b64encode(f).rstrip(b"=").decode() for f in frames)
    head = (
        "GET /v1/client HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
        f"Authorization: Bearer {token}\r\nX-Pio-Early: {early}\r\n\r\n"
    )
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head.encode())
        reply = b""
        with trio.fail_after(5):
            while data := await stream.receive_some():
                reply += data
                if b"max_frame" in reply or reply.startswith(b"HTTP/1.1 4"):
                    break
    return reply


async def test_hello_in_the_upgrade_request_is_answered_with_the_101(relay, tokens) -> None:
    """No HELLO frame: the relay takes it from the request and says so in the 101."""
    from pio_remote.wire import envelope

    hello = envelope.encode_json(FrameType.HELLO, 0, {"version": 1, "role": "client"})
    reply = await _upgrade_with_early(relay.port, tokens["carol"], [hello])
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"\r\nX-Pio-Early: 1" in head
    assert b'"account":"carol"' in rest  # WELCOME right behind the 101


async def test_early_frames_of_a_refused_token_are_never_read(relay, tokens) -> None:
    from pio_remote.wire import envelope

    hello = envelope.encode_json(FrameType.HELLO, 0, {"version": 1, "role": "client"})
    list_frame = envelope.encode(FrameType.LIST, 1)
    reply = await _upgrade_with_early(relay.port, "not-a-token", [hello, list_frame])
    assert reply.startswith(b"HTTP/1.1 401 ")
    assert b"X-Pio-Early" not in reply and b"max_frame" not in reply
