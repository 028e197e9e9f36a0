"""Cross-node events as one node handles them: no database, no sockets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pio_remote.relay.cluster.nodes import Cluster
from pio_remote.relay.router import AGENT, Peer, Router


class Agent(Peer):
    __slots__ = ("killed",)

    def __init__(self, account: str, name: str) -> None:
        super().__init__(AGENT, account)
        self.set_agent(name, frozenset(), "00" * 32)
        self.killed: list[tuple[str, int]] = []

    def kill(self, drop: str, message: str, code: int) -> None:
        self.killed.append((drop, code))


def node() -> tuple[Cluster, Router, list[str]]:
    router = Router()
    pokes: list[str] = []
    # The DSN is never used: nothing here reaches the database.
    cluster = Cluster("postgresql:///unused", "n1", router, lambda: pokes.append("poke"))
    return cluster, router, pokes


def takeover(owner: str, name: str, node_id: str, since: datetime) -> dict[str, object]:
    return {"kind": "takeover", "owner": owner, "name": name, "node": node_id,
            "since": since.isoformat()}  # fmt: skip


def test_a_takeover_elsewhere_closes_our_older_agent() -> None:
    cluster, router, _ = node()
    agent = Agent("alice", "lab")
    router.add_agent(agent)
    cluster.agent_changed(agent)
    later = cluster.since(agent) + timedelta(milliseconds=1)
    cluster.handle_event(takeover("alice", "lab", "n1", later))
    assert agent.killed == [("replaced", 4409)]


def test_a_stale_takeover_spares_a_newer_agent() -> None:
    cluster, router, _ = node()
    agent = Agent("alice", "lab")
    router.add_agent(agent)
    cluster.agent_changed(agent)
    earlier = cluster.since(agent) - timedelta(seconds=1)
    cluster.handle_event(takeover("alice", "lab", "n1", earlier))
    assert agent.killed == []


def test_takeovers_of_other_nodes_or_names_change_nothing() -> None:
    cluster, router, _ = node()
    agent = Agent("alice", "lab")
    router.add_agent(agent)
    cluster.agent_changed(agent)
    now = datetime.now(UTC) + timedelta(seconds=1)
    cluster.handle_event(takeover("alice", "lab", "n2", now))
    cluster.handle_event(takeover("alice", "other", "n1", now))
    cluster.handle_event(takeover("bob", "lab", "n1", now))
    cluster.handle_event({"kind": "takeover"})  # malformed: ignored
    assert agent.killed == []


def test_an_account_event_wakes_the_token_watcher() -> None:
    cluster, _, pokes = node()
    cluster.handle_event({"kind": "account", "name": "alice"})
    cluster.handle_event({"kind": "unknown"})
    assert pokes == ["poke"]
