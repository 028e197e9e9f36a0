"""The relay's admission and rate limits, each set by its `relay serve` option."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from relay_testkit import ConnectError, agent, client, http_get, metric, open_channel, wire

from pio_remote.relay.accounts import Accounts
from pio_remote.wire import envelope
from pio_remote.wire.envelope import FrameType


def accounts(data: Path, *names: str) -> list[str]:
    with Accounts(data) as db:
        return [db.add(name) for name in names]


async def test_connections_per_account_are_capped(start_relay, tmp_path: Path) -> None:
    alice, bob = accounts(tmp_path / "data", "alice", "bob")
    relay = start_relay(tmp_path / "data", ["--max-connections-per-account", "2"])
    async with agent(relay.url, alice, "lab"), client(relay.url, alice):
        with pytest.raises(ConnectError) as refused:
            async with wire(relay.url, alice, "client"):
                pass
        assert refused.value.status == 429
        assert str(refused.value).endswith(
            "(HTTP 429 Too Many Requests): too many connections for account 'alice' (at most "
            "2): stop some agents or clients, or ask the relay admin to raise "
            "--max-connections-per-account"
        )
        async with client(relay.url, bob) as other:  # another account has its own count
            await other.send(FrameType.PING, 0, b"ok")
            assert (await other.expect(FrameType.PONG)).payload == b"ok"
    _, body = await relay.scrape()
    assert metric(body, 'relay_drops_total{reason="account_limit"}') == 1


async def test_connections_per_ip_are_capped(start_relay, tmp_path: Path) -> None:
    (alice,) = accounts(tmp_path / "data", "alice")
    relay = start_relay(tmp_path / "data", ["--max-connections-per-ip", "2"])
    async with client(relay.url, alice), client(relay.url, alice):
        status, body = await http_get(relay.port, "/healthz")
        assert status == 429
        assert body.startswith("too many connections from 127.0.0.1 (at most 2): ")
        with pytest.raises(ConnectError) as refused:
            async with wire(relay.url, alice, "client"):
                pass
        assert refused.value.status == 429
    relay.stop()
    assert relay.log_path.read_text().count("too many connections from 127.0.0.1") == 2


async def test_accept_rate_paces_new_connections_and_refuses_none(
    start_relay, tmp_path: Path
) -> None:
    relay = start_relay(tmp_path / "data", ["--accept-rate", "4", "--accept-burst", "2"])
    start = trio.current_time()
    for _ in range(8):  # 2 at once, then 6 at 4 a second: at least 1.5 s
        assert await http_get(relay.port, "/healthz") == (200, "ok\n")
    assert trio.current_time() - start >= 1.4
    _, body = await relay.scrape()
    assert metric(body, "relay_accept_throttled_total") >= 6


async def test_per_connection_rate_paces_the_sender_only(start_relay, tmp_path: Path) -> None:
    (alice,) = accounts(tmp_path / "data", "alice")
    relay = start_relay(tmp_path / "data", ["--rate", "1MiB", "--rate-burst", "256KiB"])
    async with agent(relay.url, alice, "lab") as agt, client(relay.url, alice) as cli:
        aid, _ = await open_channel(cli, agt, 1, "lab")
        chunk = os.urandom(envelope.MAX_PAYLOAD)
        frames = 2 * 1024 * 1024 // len(chunk) + 1
        start = trio.current_time()

        async def send() -> None:
            for _ in range(frames):
                await cli.send(FrameType.DATA, 1, chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            for _ in range(frames):
                assert (await agt.expect(FrameType.DATA)).channel == aid
        # 2 MiB through a 1 MiB/s bucket holding 256 KiB: at least 1.75 s.
        assert trio.current_time() - start >= 1.5
        # The agent's own direction is not held back by the client's limit.
        await agt.send(FrameType.DATA, aid, b"quick")
        with trio.fail_after(1):
            assert (await cli.expect(FrameType.DATA)).payload == b"quick"
    _, body = await relay.scrape()
    assert metric(body, "relay_rate_limited_total") >= 1
