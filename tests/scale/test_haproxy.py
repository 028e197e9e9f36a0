"""Three relay nodes behind HAProxy (docs/haproxy.cfg), with the real agent and client code.

Agents run ``run_agent`` (reconnect with backoff, ``agent=OWNER/NAME`` in the
URL) and clients the ``Client`` library, all in this process on trio, all
through one HAProxy port: which node each lands on is HAProxy's choice.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from clusterkit import USERS, Nodes
from haproxykit import HAPROXY, HAProxy
from relay_testkit import client as raw_client

from pio_remote import home
from pio_remote.agent.config import AgentConfig
from pio_remote.agent.service import run_agent
from pio_remote.agent.state import AgentState
from pio_remote.client.api import Client
from pio_remote.net import link
from pio_remote.wire.envelope import FrameType

pytestmark = pytest.mark.skipif(
    HAPROXY is None, reason="HAProxy is not installed: apt-get install haproxy"
)

NODES = ("n1", "n2", "n3")
AGENTS_PER_USER = 10
ONLINE_DEADLINE_S = 20.0  # 30 agents connect, some twice (first to learn their owner)
BACK_DEADLINE_S = 10.0  # the promise after a node is killed
CALL_TIMEOUT_S = 10.0


class Lab:
    """Nodes, HAProxy, and a home (identity) per account shared by its agents and client."""

    def __init__(self, nodes: Nodes, tmp: Path) -> None:
        self.nodes = nodes
        self.ports = {n: int(nodes.start(n).rsplit(":", 1)[1]) for n in NODES}
        self.proxy = HAProxy(tmp, self.ports)
        self.homes = {}
        for user in USERS:
            self.homes[user] = tmp / f"home-{user}"
            self.homes[user].mkdir()
        self.agents: dict[str, AgentState] = {}

    def start_agents(self, nursery: trio.Nursery, per_user: int) -> list[str]:
        refs = []
        for user in USERS:
            path = self.homes[user]
            for i in range(per_user):
                name = f"{user}-a{i}"
                state = AgentState(name, path, home.load_identity(path), AgentConfig())
                creds = home.Credentials(self.proxy.url, self.nodes.tokens[user])
                nursery.start_soon(run_agent, state, creds)
                self.agents[f"{user}/{name}"] = state
                refs.append(f"{user}/{name}")
        return refs

    def client(self, user: str) -> Client:
        return Client.connect(self.proxy.url, self.nodes.tokens[user], self.homes[user])  # type: ignore[return-value]

    def node_url(self, node: str) -> str:
        return f"ws://127.0.0.1:{self.ports[node]}"


@pytest.fixture
def lab(nodes: Nodes, tmp_path: Path) -> Iterator[Lab]:
    built = Lab(nodes, tmp_path)
    try:
        yield built
    finally:
        built.proxy.stop()


async def listed_on(url: str, token: str) -> dict[str, str]:
    """agent -> node, as the node at ``url`` lists them (straight to it, not via HAProxy)."""
    async with raw_client(url, token) as cli:
        await cli.send(FrameType.LIST, 9)
        return {a["agent"]: a["node"] for a in (await cli.expect(FrameType.LIST)).json()}


async def until_all_listed(
    lab: Lab, refs: list[str], deadline: float, nodes: tuple[str, ...] = NODES
) -> dict[str, str]:
    """Ask ``nodes`` until each lists every agent of its account, each online on one of
    ``nodes``; returns agent -> node."""
    with trio.fail_after(deadline):
        while True:
            where: dict[str, str] = {}
            complete = True
            for node in nodes:
                for user in USERS:
                    seen = await listed_on(lab.node_url(node), lab.nodes.tokens[user])
                    mine = {r for r in refs if r.startswith(f"{user}/")}
                    complete &= set(seen) == mine and set(seen.values()) <= set(nodes)
                    where.update(seen)
            if complete:
                return where
            await trio.sleep(0.2)


async def hashed_node(lab: Lab, ref: str) -> str:
    """The node HAProxy sends ``?agent=ref`` to (from the WELCOME)."""
    token = lab.nodes.tokens[ref.split("/")[0]]
    async with link.connect(lab.proxy.url, token, {"role": "client"}, {"agent": ref}) as lnk:
        assert lnk.node is not None
        return lnk.node


async def call_info(lab: Lab, ref: str) -> str:
    user = ref.split("/")[0]
    with trio.fail_after(CALL_TIMEOUT_S):
        async with lab.client(user) as cli:  # type: ignore[attr-defined]
            async with cli.session(ref.split("/")[1]) as agent:
                return (await agent.call("agent.info"))["agent"]


async def test_thirty_agents_and_their_clients_through_haproxy(lab: Lab) -> None:
    async with trio.open_nursery() as nursery:
        refs = lab.start_agents(nursery, AGENTS_PER_USER)
        where = await until_all_listed(lab, refs, ONLINE_DEADLINE_S)
        assert len(where) == 30
        assert len(set(where.values())) >= 2, f"HAProxy put every agent on one node: {where}"
        # Every client reaches its agent, each over its own HAProxy connection.
        got: dict[str, str] = {}

        async def one(ref: str) -> None:
            got[ref] = await call_info(lab, ref)

        async with trio.open_nursery() as calls:
            for ref in refs:
                calls.start_soon(one, ref)
        assert got == {ref: ref for ref in refs}
        # One client fans out to all of its account's agents: one link per node.
        async with lab.client("alice") as cli:  # type: ignore[attr-defined]
            mine = [r for r in refs if r.startswith("alice/")]
            results = await cli.fan_out(mine, "agent.info", timeout=CALL_TIMEOUT_S)
            assert {k: v["agent"] for k, v in results.items()} == {r: r for r in mine}
            assert set(cli.nodes.by_node) == {where[r] for r in mine} | {cli.link.node}
        nursery.cancel_scope.cancel()


async def test_killed_node_its_agents_come_back_through_the_others(lab: Lab) -> None:
    async with trio.open_nursery() as nursery:
        refs = lab.start_agents(nursery, 4)
        where = await until_all_listed(lab, refs, ONLINE_DEADLINE_S)
        victim = max(NODES, key=lambda n: sum(1 for v in where.values() if v == n))
        moved = sorted(r for r, n in where.items() if n == victim)
        assert moved
        lab.nodes.procs[victim].stop(signal.SIGKILL)
        start = trio.current_time()
        alive = tuple(n for n in NODES if n != victim)
        after = await until_all_listed(lab, refs, BACK_DEADLINE_S, alive)
        took = trio.current_time() - start
        assert all(after[r] != victim for r in refs), after
        assert await call_info(lab, moved[0]) == moved[0]
        print(f"{len(moved)} agents of {victim} listed again after {took:.1f} s")
        nursery.cancel_scope.cancel()


async def test_an_agent_off_its_hashed_node_is_reached_by_node_name(lab: Lab) -> None:
    """Agents connected straight to n1 (as after their node came back, or a node was
    added): clients through HAProxy find them via the listing and ``?node=n1``."""
    path = lab.homes["alice"]
    refs = [f"alice/off-{i}" for i in range(6)]
    async with trio.open_nursery() as nursery:
        for ref in refs:
            state = AgentState(ref.split("/")[1], path, home.load_identity(path), AgentConfig())
            creds = home.Credentials(lab.node_url("n1"), lab.nodes.tokens["alice"])
            nursery.start_soon(run_agent, state, creds)
        assert set((await until_all_listed(lab, refs, ONLINE_DEADLINE_S)).values()) == {"n1"}
        async with lab.client("alice") as cli:  # type: ignore[attr-defined]
            results = await cli.fan_out(refs, "agent.info", timeout=CALL_TIMEOUT_S)
            assert {k: v["agent"] for k, v in results.items()} == {r: r for r in refs}
            # Reached over one link to n1: none was opened for the nodes the names hash to.
            assert set(cli.nodes.by_node) == {"n1", cli.link.node}
        # And some of those names hash to another node: the fallback was needed.
        hashed = {r: await hashed_node(lab, r) for r in refs}
        assert set(hashed.values()) - {"n1"}, f"every name hashes to n1: pick others {hashed}"
        nursery.cancel_scope.cancel()
