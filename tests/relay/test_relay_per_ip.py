"""Per-address limits from real relay processes: silent connections, token guessing, and
clients behind a reverse proxy (no way around the limits by a forged header)."""

from __future__ import annotations

from pathlib import Path

import trio
from relay_testkit import RECV_TIMEOUT_S, metric

from pio_remote.relay.accounts import Accounts

UPGRADE = (
    "GET /v1/client HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


async def upgrade_status(port: int, source: str, token: str, real_ip: str = "") -> int:
    """Send one WebSocket upgrade from ``source``; the relay's HTTP status."""
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    async with stream:
        head = UPGRADE + f"Authorization: Bearer {token}\r\n"
        if real_ip:
            head += f"X-Real-IP: {real_ip}\r\n"
        await stream.send_all((head + "\r\n").encode())
        with trio.fail_after(RECV_TIMEOUT_S):
            answer = await stream.receive_some(64)
    return int(answer.split()[1])


def account(data: Path) -> str:
    with Accounts(data) as db:
        return db.add("alice")


async def test_a_forged_real_ip_header_does_not_dodge_the_throttle(start_relay, tmp_path) -> None:
    """Attacker guessing tokens puts a new X-Real-IP on each try → still counted as its own
    address (the relay trusts that header only from --trusted-proxy), and refused."""
    token = account(tmp_path / "data")
    relay = start_relay(tmp_path / "data", ["--auth-failures-per-ip", "5"])
    statuses = [
        await upgrade_status(relay.port, "127.0.0.2", f"guess{n}", f"198.51.100.{n}")
        for n in range(8)
    ]
    assert statuses == [401] * 5 + [429] * 3
    assert await upgrade_status(relay.port, "127.0.0.2", token) == 429  # even a good one
    assert await upgrade_status(relay.port, "127.0.0.1", token) == 101  # others unaffected


async def test_behind_a_trusted_proxy_each_client_has_its_own_count(start_relay, tmp_path) -> None:
    """One client's bad tokens through the proxy → that client is throttled, not the proxy."""
    token = account(tmp_path / "data")
    extra = ["--auth-failures-per-ip", "3", "--trusted-proxy", "127.0.0.1"]
    relay = start_relay(tmp_path / "data", extra)
    bad = [await upgrade_status(relay.port, "127.0.0.1", "x", "203.0.113.9") for _ in range(4)]
    assert bad == [401, 401, 401, 429]
    assert await upgrade_status(relay.port, "127.0.0.1", token, "203.0.113.10") == 101
    assert await upgrade_status(relay.port, "127.0.0.1", token, "203.0.113.9") == 429
    # The header counts only from the proxy: 127.0.0.2 is not one.
    assert await upgrade_status(relay.port, "127.0.0.2", token, "203.0.113.10") == 101
    relay.stop()
    assert "203.0.113.9 3 (+2 refused unread" in relay.log()


async def test_silent_connections_of_one_address_are_capped_and_timed_out(
    start_relay, tmp_path
) -> None:
    """Attacker opens connections from one address and sends nothing → past
    --max-pending-per-ip they are closed at once, the rest get 408 at --head-timeout,
    and another address is served meanwhile."""
    token = account(tmp_path / "data")
    extra = ["--max-pending-per-ip", "3", "--head-timeout", "1"]
    relay = start_relay(tmp_path / "data", extra)
    silent = [
        await trio.open_tcp_stream("127.0.0.1", relay.port, local_address="127.0.0.2")
        for _ in range(4)
    ]
    try:
        with trio.fail_after(0.9):  # the fourth is closed unread, before any deadline
            assert await silent[3].receive_some(64) == b""
        assert await upgrade_status(relay.port, "127.0.0.1", token) == 101
        with trio.fail_after(RECV_TIMEOUT_S):
            answers = [await stream.receive_some(64) for stream in silent[:3]]
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers
    finally:
        for stream in silent:
            await stream.aclose()
    _, body = await relay.scrape()
    assert metric(body, 'relay_drops_total{reason="pending_limit"}') == 1
    assert metric(body, 'relay_drops_total{reason="head_timeout"}') == 3
