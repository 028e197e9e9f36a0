"""The relay as a real process, driven by raw envelope peers."""

from __future__ import annotations

import os

import pytest
import trio
from relay_testkit import (
    ConnectError,
    agent,
    client,
    http_get,
    metric,
    new_key,
    open_channel,
    relay_cli,
    wire,
)

from pio_remote.relay.accounts import Accounts
from pio_remote.wire import envelope
from pio_remote.wire.e2e import fingerprint
from pio_remote.wire.envelope import FrameType

_names = iter(range(10**6))


def unique(prefix: str = "board") -> str:
    """Agent names unique across tests, since they share one relay."""
    return f"{prefix}-{next(_names)}"


async def test_healthz_metrics_and_404(start_relay, tmp_path) -> None:
    data = tmp_path / "data"
    with Accounts(data) as accounts:
        token = accounts.add("alice")
    relay = start_relay(data)  # its own relay: the gauges below are exact
    assert await http_get(relay.port, "/healthz") == (200, "ok\n")
    async with (
        agent(relay.url, token, "one"),
        agent(relay.url, token, "two"),
        client(relay.url, token),
        wire(relay.url, token, "client"),  # connected, but no HELLO yet
    ):
        status, body = await relay.scrape()
    assert status == 200
    assert "# TYPE relay_drops_total counter" in body
    assert metric(body, 'relay_connections{role="agent"}') == 2
    assert metric(body, 'relay_connections{role="client"}') == 2
    assert metric(body, "relay_agents_online") == 2
    assert metric(body, "relay_connections_accepted_total") == 4
    assert metric(body, 'relay_drops_total{reason="slow_consumer"}') == 0
    status, body = await http_get(relay.port, "/elsewhere")
    assert status == 404 and "/healthz" in body


async def test_upgrade_needs_a_valid_token(relay, tokens) -> None:
    before = metric((await relay.scrape())[1], 'relay_drops_total{reason="auth"}')
    with pytest.raises(ConnectError) as missing:
        async with wire(relay.url, None, "agent"):
            pass
    assert missing.value.status == 401
    assert "missing Authorization header" in str(missing.value)
    with pytest.raises(ConnectError) as bad:
        async with wire(relay.url, "not-a-token", "client"):
            pass
    assert bad.value.status == 401
    assert "(HTTP 401 Unauthorized): bad token: " in str(bad.value)
    status, body = await http_get(relay.port, "/v1/client", ["Authorization: Basic eA=="])
    assert status == 401 and body.startswith("bad token: ")
    status, body = await http_get(
        relay.port, "/v1/agent", [f"Authorization: Bearer {tokens['alice']}"]
    )
    assert status == 426 and "WebSocket" in body
    after = metric((await relay.scrape())[1], 'relay_drops_total{reason="auth"}')
    assert after == before + 3


async def test_welcome_names_the_account(relay, tokens) -> None:
    async with wire(relay.url, tokens["bob"], "client") as peer:
        welcome = await peer.hello_client()
    assert welcome == {"version": 1, "account": "bob", "max_frame": envelope.MAX_FRAME_SIZE}
    async with wire(relay.url, tokens["alice"], "agent") as peer:
        welcome = await peer.hello_agent(unique())
    assert welcome["account"] == "alice"


async def test_open_data_close_both_ways(relay, tokens) -> None:
    name = unique()
    key = new_key()
    async with (
        agent(relay.url, tokens["alice"], name, key=key) as agt,
        client(relay.url, tokens["alice"]) as cli,
    ):
        aid, opened = await open_channel(cli, agt, 41, name)
        assert opened == {"agent": f"alice/{name}", "key": key}
        payloads = [b"", b"\x00\xff" * 7, os.urandom(envelope.MAX_PAYLOAD)]
        for payload in payloads:
            await cli.send(FrameType.DATA, 41, payload)
            got = await agt.expect(FrameType.DATA)
            assert (got.channel, got.payload) == (aid, payload)
            await agt.send(FrameType.DATA, aid, payload[::-1])
            back = await cli.expect(FrameType.DATA)
            assert (back.channel, back.payload) == (41, payload[::-1])
        # the OPEN the agent saw names the client's account
        await cli.send(FrameType.CLOSE, 41, b"done here")
        closed = await agt.expect(FrameType.CLOSE)
        assert (closed.channel, closed.payload) == (aid, b"done here")
        # the channel is forgotten: DATA on it is dropped, and cid 41 may be reused
        await cli.send(FrameType.DATA, 41, b"late")
        aid2, _ = await open_channel(cli, agt, 41, f"alice/{name}")
        await agt.send(FrameType.CLOSE, aid2, b"agent says bye")
        closed = await cli.expect(FrameType.CLOSE)
        assert (closed.channel, closed.text()) == (41, "agent says bye")


async def test_agent_learns_client_account(relay, tokens) -> None:
    name = unique()
    async with (
        agent(relay.url, tokens["alice"], name, ["bob"]) as agt,
        client(relay.url, tokens["bob"]) as cli,
    ):
        await cli.send(FrameType.OPEN, 1, f"alice/{name}".encode())
        request = await agt.expect(FrameType.OPEN)
        assert request.text() == "bob"
        assert (await cli.expect(FrameType.OPENED)).json()["agent"] == f"alice/{name}"


async def test_share_acl_and_name_resolution(relay, tokens) -> None:
    private, shared = unique("private"), unique("shared")
    async with (
        agent(relay.url, tokens["alice"], private) as _,
        agent(relay.url, tokens["alice"], shared, ["bob"]) as shared_agt,
        client(relay.url, tokens["bob"]) as bob,
    ):
        for cid, ref in ((1, private), (2, f"alice/{private}")):
            await bob.send(FrameType.OPEN, cid, ref.encode())
            refused = await bob.expect(FrameType.CLOSE)
            assert refused.channel == cid
            assert refused.text() == (
                f"agent 'alice/{private}' is offline or not shared with account 'bob'"
                if "/" in ref
                else f"agent '{private}' is offline or not shared with account 'bob'"
            )
        await open_channel(bob, shared_agt, 3, shared)
        await bob.send(FrameType.LIST, 9)
        listing = await bob.expect(FrameType.LIST)
        assert listing.channel == 9
        agents = {a["agent"]: a for a in listing.json()}
        assert f"alice/{shared}" in agents and f"alice/{private}" not in agents
        assert agents[f"alice/{shared}"]["shared"] is True
        assert agents[f"alice/{shared}"]["owner"] == "alice"
    status, body = await relay.scrape()
    assert metric(body, 'relay_drops_total{reason="not_reachable"}') >= 2


async def test_ambiguous_name_lists_candidates(relay, tokens) -> None:
    name = unique()
    async with (
        agent(relay.url, tokens["alice"], name, ["dave"]),
        agent(relay.url, tokens["carol"], name, ["dave"]) as carols,
        client(relay.url, tokens["dave"]) as dave,
    ):
        await dave.send(FrameType.OPEN, 1, name.encode())
        refused = await dave.expect(FrameType.CLOSE)
        assert f"alice/{name}, carol/{name}" in refused.text()
        _, opened = await open_channel(dave, carols, 2, f"carol/{name}")
        assert opened["agent"] == f"carol/{name}"


async def test_the_same_agent_reconnecting_replaces_its_old_connection(relay, tokens) -> None:
    name, key = unique(), new_key()
    async with (
        agent(relay.url, tokens["alice"], name, key=key) as old,
        client(relay.url, tokens["alice"]) as cli,
    ):
        await open_channel(cli, old, 5, name)
        async with agent(relay.url, tokens["alice"], name, key=key) as new:
            error = await old.expect_error("replaced")
            assert error["message"].startswith(
                f"another agent named '{name}' connected for account 'alice' with this agent's key"
            )
            assert await old.closed() == 4409
            closed = await cli.expect(FrameType.CLOSE)
            assert (closed.channel, closed.text()) == (5, "agent replaced")
            aid, _ = await open_channel(cli, new, 6, name)
            await cli.send(FrameType.DATA, 6, b"to the new one")
            assert (await new.expect(FrameType.DATA)).payload == b"to the new one"


async def test_another_key_cannot_take_a_running_agents_name(relay, tokens) -> None:
    """Attacker (or a second machine) says HELLO with a taken name and another key:
    refused with whose key and from where; the running agent keeps serving."""
    name, key = unique(), new_key()
    async with (
        agent(relay.url, tokens["alice"], name, key=key) as first,
        client(relay.url, tokens["alice"]) as cli,
    ):
        await open_channel(cli, first, 5, name)
        async with wire(relay.url, tokens["alice"], "agent") as second:
            hello = {"version": 1, "role": "agent", "name": name, "key": new_key()}
            await second.send_json(FrameType.HELLO, 0, hello)
            error = await second.expect_error("name_taken")
            assert await second.closed() == 4409
        message = error["message"]
        assert f"agent name '{name}' is taken for account 'alice'" in message
        assert fingerprint(bytes.fromhex(key)) in message
        assert "from 127.0.0.1:" in message and "-n NAME" in message
        await cli.send(FrameType.DATA, 5, b"still there")
        assert (await first.expect(FrameType.DATA)).payload == b"still there"
        await cli.send(FrameType.LIST, 9)
        listed = (await cli.expect(FrameType.LIST)).json()
        assert [a["key"] for a in listed if a["name"] == name] == [key]


async def test_disconnects_close_the_other_side(relay, tokens) -> None:
    name = unique()
    async with client(relay.url, tokens["alice"]) as cli:
        async with agent(relay.url, tokens["alice"], name) as agt:
            await open_channel(cli, agt, 1, name)
            await open_channel(cli, agt, 2, name)
        got = {(f.channel, f.text()) for f in [await cli.recv(), await cli.recv()]}
        assert got == {(1, "agent disconnected"), (2, "agent disconnected")}
        async with agent(relay.url, tokens["alice"], name) as agt:
            async with client(relay.url, tokens["alice"]) as other:
                aid, _ = await open_channel(other, agt, 3, name)
            closed = await agt.expect(FrameType.CLOSE)
            assert (closed.channel, closed.text()) == (aid, "client disconnected")


async def test_ping_pong_and_unknown_channel_drops(relay, tokens) -> None:
    before = metric((await relay.scrape())[1], 'relay_drops_total{reason="unknown_channel"}')
    async with client(relay.url, tokens["bob"]) as cli:
        await cli.send(FrameType.PING, 0, b"hi there")
        pong = await cli.expect(FrameType.PONG)
        assert pong.payload == b"hi there"
        await cli.send(FrameType.DATA, 77, b"nobody home")
        await cli.send(FrameType.CLOSE, 78)
        await cli.send(FrameType.PING, 0, b"still here")
        assert (await cli.expect(FrameType.PONG)).payload == b"still here"
    after = metric((await relay.scrape())[1], 'relay_drops_total{reason="unknown_channel"}')
    assert after >= before + 2


async def test_protocol_errors_close_only_the_offender(relay, tokens) -> None:
    name = unique()
    async with (
        agent(relay.url, tokens["alice"], name) as agt,
        client(relay.url, tokens["alice"]) as cli,
    ):
        aid, _ = await open_channel(cli, agt, 1, name)
        async with wire(relay.url, tokens["alice"], "client") as bad:
            await bad.send_json(FrameType.HELLO, 0, {"version": 2, "role": "client"})
            error = await bad.expect_error("version")
            assert "version 1" in error["message"]
            assert await bad.closed() == 4400
        async with wire(relay.url, tokens["alice"], "client") as bad:
            await bad.send_json(FrameType.HELLO, 0, {"version": 1, "role": "agent"})
            assert "/v1/client" in (await bad.expect_error("malformed"))["message"]
        async with client(relay.url, tokens["alice"]) as bad:
            await open_channel(bad, agt, 9, name)
            await bad.send(FrameType.OPEN, 9, name.encode())
            assert "already open" in (await bad.expect_error("malformed"))["message"]
            assert await bad.closed() == 4400
        assert (await agt.expect(FrameType.CLOSE)).text() == "client disconnected"
        async with agent(relay.url, tokens["alice"], unique()) as bad:
            await bad.send(FrameType.OPEN, 3, b"x")
            assert "not accepted from agents" in (await bad.expect_error("malformed"))["message"]
        await cli.send(FrameType.DATA, 1, b"still works")
        assert (await agt.expect(FrameType.DATA)).payload == b"still works"


async def test_revoked_token_drops_live_connection(relay) -> None:
    account = unique("erin")
    with Accounts(relay.data_dir) as accounts:
        token = accounts.add(account)
    async with client(relay.url, token) as cli:
        # a separate process revokes the token while we are connected
        result = await trio.to_thread.run_sync(
            lambda: relay_cli("token", account, "--regenerate", data_dir=relay.data_dir)
        )
        assert result.returncode == 0, result.stderr
        new_token = result.stdout.strip()
        with trio.fail_after(4):
            error = await cli.expect_error("token_revoked")
            assert account in error["message"]
            assert await cli.closed() == 4401
    with pytest.raises(ConnectError) as rejected:
        async with wire(relay.url, token, "client"):
            pass
    assert rejected.value.status == 401
    async with client(relay.url, new_token) as cli:
        result = await trio.to_thread.run_sync(
            lambda: relay_cli("user", "remove", account, data_dir=relay.data_dir)
        )
        assert result.returncode == 0, result.stderr
        await cli.expect_error("token_revoked", timeout=4)


async def test_oversized_frame_closes_connection(relay, tokens) -> None:
    async with client(relay.url, tokens["bob"]) as cli:
        await cli.send_raw(b"\x05" + b"\x00" * envelope.MAX_FRAME_SIZE)
        assert await cli.closed() == 1009
    status, body = await relay.scrape()
    assert metric(body, 'relay_drops_total{reason="oversized"}') >= 1


async def test_slow_reader_loses_its_channel_and_stalls_no_one(start_relay, tmp_path) -> None:
    """A client that stops reading while its agent floods it: that channel alone is
    closed as slow_consumer (both ends told), and the agent's other client is not held up."""
    data = tmp_path / "data"
    with Accounts(data) as accounts:
        token = accounts.add("alice")
    relay = start_relay(data, ["--send-queue-bytes", "1MiB", "--slow-consumer-grace", "0.5"])
    async with (
        agent(relay.url, token, "lab") as agt,
        client(relay.url, token) as slow,
        client(relay.url, token) as fast,
    ):
        slow_aid, _ = await open_channel(slow, agt, 1, "lab")
        fast_aid, _ = await open_channel(fast, agt, 2, "lab")
        flood = os.urandom(envelope.MAX_PAYLOAD)
        closed = trio.Event()
        reasons: list[str] = []

        async def flood_the_slow_one() -> None:
            while not closed.is_set():  # ignoring credit, as a broken or hostile peer would
                await agt.send(FrameType.DATA, slow_aid, flood)

        async def agent_reader() -> None:
            while True:
                frame = await agt.recv(timeout=10)
                if frame.type is FrameType.DATA and frame.channel == fast_aid:
                    await agt.send(FrameType.DATA, fast_aid, frame.payload)
                elif frame.type is FrameType.CLOSE and frame.channel == slow_aid:
                    reasons.append(frame.text())
                    closed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood_the_slow_one)
            nursery.start_soon(agent_reader)
            rounds = 0
            while not closed.is_set() or rounds < 20:
                with trio.fail_after(2):  # a stall behind the flood would hit this
                    await fast.send(FrameType.DATA, 2, rounds.to_bytes(64, "big"))
                    echo = await fast.expect(FrameType.DATA)
                assert echo.payload == rounds.to_bytes(64, "big")
                rounds += 1
                assert rounds < 10_000, "the slow channel was never closed"
            nursery.cancel_scope.cancel()
        assert reasons == ["slow_consumer: client 'alice' read too slowly"]
        # The slow client finds, after what was already on its way, the CLOSE and why.
        with trio.fail_after(10):
            while (frame := await slow.recv()).type is FrameType.DATA:
                pass
        assert (frame.type, frame.channel) == (FrameType.CLOSE, 1)
        assert frame.text() == (
            "slow_consumer: this client read too slowly: more than 2 MiB waited for it"
        )
        # The slow client's connection itself is fine: it can open a new channel.
        await open_channel(slow, agt, 3, "lab")
    _, body = await relay.scrape()
    assert metric(body, 'relay_drops_total{reason="slow_consumer"}') == 1
