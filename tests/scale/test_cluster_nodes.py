"""Several relay nodes on one PostgreSQL: presence, expiry, cross-node events.

Raw envelope peers connect to chosen nodes directly (no load balancer), so
each test decides which node a peer lands on. The deadlines are the promises
in docs/scaling.md; waits are for frames and close codes, and listing is
asked again until it matches or the deadline passes.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import trio
from clusterkit import NODE_TIMEOUT_S, Nodes
from pgkit import PgCluster
from relay_testkit import Wire, agent, client, open_channel, wire

from pio_remote.net import link
from pio_remote.wire.e2e import fingerprint
from pio_remote.wire.envelope import FrameType

CROSS_NODE_DEADLINE_S = 1.0
# Presence is written in a batch right after HELLO: well under a second.
LISTED_DEADLINE_S = 3.0


async def list_refs(cli: Wire) -> set[str]:
    await cli.send(FrameType.LIST, 7)
    frame = await cli.expect(FrameType.LIST)
    return {item["agent"] for item in frame.json()}


async def until_listed(cli: Wire, expected: set[str], deadline: float) -> float:
    """Ask LIST until it is ``expected``; returns the seconds it took."""
    start = trio.current_time()
    with trio.fail_after(deadline):
        while await list_refs(cli) != expected:
            await trio.sleep(0.1)
    return trio.current_time() - start


async def test_agents_on_every_node_are_listed_from_any_node(nodes: Nodes) -> None:
    urls = [nodes.start(n) for n in ("n1", "n2", "n3")]
    alice, bob = nodes.tokens["alice"], nodes.tokens["bob"]
    async with (
        agent(urls[0], alice, "a1"),
        agent(urls[1], alice, "a2"),
        agent(urls[2], bob, "b1", shares=["alice"]),
        agent(urls[2], bob, "private"),
    ):
        for url in urls:
            async with client(url, alice) as cli:
                await until_listed(cli, {"alice/a1", "alice/a2", "bob/b1"}, LISTED_DEADLINE_S)
        async with client(urls[0], bob) as cli:
            await until_listed(cli, {"bob/b1", "bob/private"}, LISTED_DEADLINE_S)
    async with client(urls[1], alice) as cli:  # gone when they disconnect
        await until_listed(cli, set(), LISTED_DEADLINE_S)


async def test_welcome_names_the_node(nodes: Nodes) -> None:
    url = nodes.start("n1")
    async with wire(url, nodes.tokens["alice"], "client") as peer:
        assert (await peer.hello_client())["node"] == "n1"


async def test_agents_of_a_killed_node_expire_by_its_heartbeat(nodes: Nodes) -> None:
    url1, url2 = nodes.start("n1"), nodes.start("n2")
    alice = nodes.tokens["alice"]
    async with client(url2, alice) as cli:
        async with agent(url1, alice, "doomed"), agent(url2, alice, "stays"):
            await until_listed(cli, {"alice/doomed", "alice/stays"}, LISTED_DEADLINE_S)
            nodes.procs["n1"].stop(signal.SIGKILL)
            took = await until_listed(cli, {"alice/stays"}, NODE_TIMEOUT_S * 2 + 1)
        assert took > NODE_TIMEOUT_S * 0.5, "expired before the node timeout: not by heartbeat?"


async def test_removing_a_user_drops_its_connections_on_every_node(nodes: Nodes) -> None:
    urls = [nodes.start(n) for n in ("n1", "n2", "n3")]
    carol, bob = nodes.tokens["carol"], nodes.tokens["bob"]
    async with (
        agent(urls[1], carol, "lab") as on_b,
        client(urls[2], carol) as on_c,
        client(urls[1], bob) as bob_b,
    ):
        removed = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pio_remote.relay",
                    "user",
                    "remove",
                    "carol",
                    "--database",
                    nodes.dsn,
                ],
                capture_output=True,
                timeout=30,
            )
        )
        assert removed.returncode == 0
        with trio.fail_after(CROSS_NODE_DEADLINE_S):
            assert await on_b.closed() == 4401
            assert await on_c.closed() == 4401
        assert await list_refs(bob_b) == set()


async def test_taking_over_a_name_on_another_node_closes_the_old_agent(nodes: Nodes) -> None:
    """The same agent (same key) reconnecting through another node takes over."""
    url1, url2 = nodes.start("n1"), nodes.start("n2")
    alice = nodes.tokens["alice"]
    async with agent(url1, alice, "lab", key="ab" * 32) as old:
        async with client(url2, alice) as cli:
            await until_listed(cli, {"alice/lab"}, LISTED_DEADLINE_S)
            async with agent(url2, alice, "lab", key="ab" * 32) as new:
                with trio.fail_after(CROSS_NODE_DEADLINE_S):
                    assert await old.closed() == 4409
                await cli.send(FrameType.LIST, 7)
                listed = (await cli.expect(FrameType.LIST)).json()
                assert [(a["agent"], a["key"]) for a in listed] == [("alice/lab", "ab" * 32)]
                aid, _ = await open_channel(cli, new, 1, "lab")
                await cli.send(FrameType.DATA, 1, b"hi")
                assert (await new.expect(FrameType.DATA)).payload == b"hi"


async def test_another_key_cannot_take_a_name_held_on_another_node(nodes: Nodes) -> None:
    """A second agent (another key) asks another node for a running agent's name →
    refused with the holder's fingerprint, address and node; the holder keeps serving."""
    url1, url2 = nodes.start("n1"), nodes.start("n2")
    alice = nodes.tokens["alice"]
    async with agent(url1, alice, "lab", key="ab" * 32) as first, client(url2, alice) as cli:
        await until_listed(cli, {"alice/lab"}, LISTED_DEADLINE_S)
        async with wire(url2, alice, "agent") as second:
            hello = {"version": 1, "role": "agent", "name": "lab", "key": "cd" * 32}
            await second.send_json(FrameType.HELLO, 0, hello)
            error = await second.expect_error("name_taken")
            assert await second.closed() == 4409
        message = error["message"]
        assert fingerprint(bytes.fromhex("ab" * 32)) in message, message
        assert "connected from 127.0.0.1:" in message and "relay node n1" in message, message
        assert "-n NAME" in message
        await cli.send(FrameType.LIST, 7)
        listed = (await cli.expect(FrameType.LIST)).json()
        assert [(a["agent"], a["key"], a["node"]) for a in listed] == [
            ("alice/lab", "ab" * 32, "n1")
        ]
        async with client(url1, alice) as near:
            await open_channel(near, first, 1, "lab")
            await near.send(FrameType.DATA, 1, b"still serving")
            assert (await first.expect(FrameType.DATA)).payload == b"still serving"


async def test_a_database_restart_stops_no_forwarding_and_hangs_nothing(
    nodes: Nodes, pg: PgCluster
) -> None:
    url1, url2 = nodes.start("n1"), nodes.start("n2")
    alice = nodes.tokens["alice"]
    async with agent(url1, alice, "lab") as agt, client(url1, alice) as cli:
        await open_channel(cli, agt, 1, "lab")
        await trio.to_thread.run_sync(pg.stop)
        restarted = False
        try:
            # Connected peers keep forwarding, and new channels open.
            await cli.send(FrameType.DATA, 1, b"during")
            assert (await agt.expect(FrameType.DATA)).payload == b"during"
            await open_channel(cli, agt, 2, "lab")
            with trio.fail_after(15):  # nothing hangs
                # A known token still logs in (tokens are cached) ...
                async with client(url2, alice) as other, agent(url2, alice, "late"):
                    assert await list_refs(other) == {"alice/late"}  # this node's, at least
                    # ... an unknown one is told to retry.
                    with pytest.raises(link.RelayError) as refused:
                        async with link.connect(url2, "not-a-token", {"role": "client"}):
                            pass
                    assert "HTTP 503" in str(refused.value), refused.value
                    assert "retry in a moment" in str(refused.value)
                    await trio.to_thread.run_sync(pg.start)
                    restarted = True
                    # "late" came online while the database was away: its node
                    # rewrites its presence once the database is back.
                    await until_listed(cli, {"alice/lab", "alice/late"}, NODE_TIMEOUT_S * 2 + 2)
        finally:
            if not restarted:
                await trio.to_thread.run_sync(pg.start)
        await cli.send(FrameType.DATA, 2, b"after")
        assert (await agt.expect(FrameType.DATA)).payload == b"after"
