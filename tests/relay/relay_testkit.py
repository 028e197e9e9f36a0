"""Helpers for the relay tests: a relay subprocess and raw envelope-speaking peers.

The envelope *is* the relay's protocol, so these peers speak it directly: no
Noise, no agent or client code from pio_remote.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import trio
from proctools import Proc

from pio_remote.net import wsclient
from pio_remote.net.wsclient import ConnectError
from pio_remote.net.wsio import ClientWebSocket, Closed
from pio_remote.wire import envelope
from pio_remote.wire.envelope import FrameType

PYTHON = sys.executable
STARTUP_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
RECV_TIMEOUT_S = 5.0


def relay_cli(*args: str, data_dir: Path, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m pio_remote.relay ARGS --data-dir DIR`` and capture its output."""
    return subprocess.run(
        [PYTHON, "-m", "pio_remote.relay", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=check,
    )


class RelayProcess:
    """``python -m pio_remote.relay serve`` on a free port; always stopped by the fixture."""

    def __init__(self, data_dir: Path, log_path: Path, extra: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.metrics_token = ""
        if not any(arg.startswith("--metrics-") for arg in extra):
            # /metrics asks for a bearer token (docs/relay.md): scrape() sends it.
            self.metrics_token = secrets.token_hex(16)
            token_file = log_path.with_name(log_path.name + ".metrics-token")
            token_file.touch(mode=0o600)
            token_file.write_text(self.metrics_token)
            extra = [*extra, "--metrics-token-file", str(token_file)]
        if "--auth-failures-per-ip" not in extra:
            # Many tests send bad tokens from 127.0.0.1 to one shared relay on
            # purpose; the throttle is tested with relays of its own.
            extra = [*extra, "--auth-failures-per-ip", "0"]
        self.child = Proc(
            [PYTHON, "-m", "pio_remote.relay", "serve", "--bind", "127.0.0.1:0"]
            + ["--data-dir", str(data_dir), "--log-level", "debug", *extra],
            log=log_path,
        )
        self.proc = self.child.popen
        try:
            m = self.child.wait_for(r"^relay listening on (\S+)", STARTUP_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        self.banner = m.group(0).strip()
        self.url = m.group(1)
        self.port = int(self.url.rsplit(":", 1)[1])
        self.http = f"{'https' if self.url.startswith('wss') else 'http'}://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def scrape(self) -> tuple[int, str]:
        """GET /metrics with the relay's metrics token: (status, body)."""
        return await http_get(
            self.port, "/metrics", [f"Authorization: Bearer {self.metrics_token}"]
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the relay and wait; kill it if it does not stop in time."""
        return self.child.stop(sig, STOP_TIMEOUT_S)


def new_key() -> str:
    return secrets.token_hex(32)


class Wire:
    """One raw WebSocket connection speaking the envelope."""

    def __init__(self, ws: ClientWebSocket) -> None:
        self.ws = ws
        self._messages: list[bytes] = []

    async def get_message(self) -> bytes:
        """The next WebSocket message (raises Closed when the relay closes)."""
        if not self._messages:
            self._messages = await self.ws.receive()
        return self._messages.pop(0)

    async def send_raw(self, message: bytes | str) -> None:
        """One WebSocket message as it is: bytes as binary, str as text."""
        if isinstance(message, str):
            self.ws.proto.send_text(message.encode())
            await self.ws.flush()
        else:
            await self.ws.send(message)

    async def send(self, ftype: int, channel: int = 0, payload: bytes = b"") -> None:
        await self.ws.send(envelope.HEADER.pack(ftype, channel) + payload)

    async def send_json(self, ftype: int, channel: int, obj: object) -> None:
        await self.ws.send(envelope.encode_json(FrameType(ftype), channel, obj))

    async def recv(self, timeout: float = RECV_TIMEOUT_S) -> envelope.Frame:
        """The next frame, skipping the relay's keepalive PINGs (answered)."""
        with trio.fail_after(timeout):
            while True:
                frame = envelope.decode(await self.get_message())
                if frame.type is not FrameType.PING:
                    return frame
                await self.send(FrameType.PONG, 0, frame.payload)

    async def expect(self, ftype: FrameType, timeout: float = RECV_TIMEOUT_S) -> envelope.Frame:
        frame = await self.recv(timeout)
        assert frame.type is ftype, f"expected {ftype.name}, got {frame} "
        return frame

    async def expect_error(self, code: str, timeout: float = RECV_TIMEOUT_S) -> dict:
        frame = await self.expect(FrameType.ERROR, timeout)
        body = frame.json()
        assert body["code"] == code, body
        return body

    async def closed(self, timeout: float = RECV_TIMEOUT_S) -> int | None:
        """Wait for the relay to close us; return the close code. Other frames are skipped."""
        with trio.fail_after(timeout):
            while True:
                try:
                    await self.get_message()
                except Closed as exc:
                    return exc.code

    async def hello_agent(self, name: str, shares: Sequence[str] = (), key: str = "") -> dict:
        hello = {"version": 1, "role": "agent", "name": name, "shares": list(shares)}
        hello["key"] = key or new_key()
        await self.send_json(FrameType.HELLO, 0, hello)
        return (await self.expect(FrameType.WELCOME)).json()

    async def hello_client(self) -> dict:
        await self.send_json(FrameType.HELLO, 0, {"version": 1, "role": "client"})
        return (await self.expect(FrameType.WELCOME)).json()


@contextlib.asynccontextmanager
async def wire(
    url: str, token: str | None, role: str, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Wire]:
    """A raw connection to ``/v1/<role>``, authenticated with ``token``.

    A refused upgrade raises wsclient.ConnectError (``status`` is the HTTP status).
    """
    headers = [] if token is None else [("Authorization", f"Bearer {token}")]
    ws = await wsclient.connect(
        url, f"/v1/{role}", headers, 2 * envelope.MAX_FRAME_SIZE, ssl_context=ssl_context
    )
    try:
        yield Wire(ws)
    finally:
        with trio.CancelScope(shield=True):
            await ws.aclose()


__all__ = ["Closed", "ConnectError"]


@contextlib.asynccontextmanager
async def agent(
    url: str, token: str, name: str, shares: Sequence[str] = (), key: str = ""
) -> AsyncIterator[Wire]:
    async with wire(url, token, "agent") as peer:
        await peer.hello_agent(name, shares, key)
        yield peer


@contextlib.asynccontextmanager
async def client(url: str, token: str) -> AsyncIterator[Wire]:
    async with wire(url, token, "client") as peer:
        await peer.hello_client()
        yield peer


async def open_channel(cli: Wire, agt: Wire, cid: int, ref: str) -> tuple[int, dict]:
    """OPEN ``ref`` on ``cid``; return (agent-side channel id, OPENED payload)."""
    await cli.send(FrameType.OPEN, cid, ref.encode())
    opened = await cli.expect(FrameType.OPENED)
    assert opened.channel == cid
    request = await agt.expect(FrameType.OPEN)
    return request.channel, opened.json()


async def http_get(port: int, path: str, headers: Sequence[str] = ()) -> tuple[int, str]:
    """A minimal HTTP/1.1 GET: (status, body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        head = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
        await stream.send_all("\r\n".join(head).encode())
        data = b""
        with trio.fail_after(RECV_TIMEOUT_S):
            while chunk := await stream.receive_some():
                data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), body.decode()


def metric(text: str, name: str) -> float:
    """One sample from Prometheus text, e.g. metric(body, 'relay_drops_total{reason="auth"}')."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(name)
