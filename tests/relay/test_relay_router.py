"""Unit tests of the routing state: no sockets, no trio."""

from __future__ import annotations

import pytest

from pio_remote.relay import router as rt
from pio_remote.relay.router import AGENT, CLIENT, Opened, Peer, ProtocolError, Refused, Router
from pio_remote.wire.e2e import fingerprint


def make_agent(owner: str, name: str, shares: tuple[str, ...] = ()) -> Peer:
    peer = Peer(AGENT, owner)
    peer.set_agent(name, frozenset(shares), "ab" * 32)
    return peer


def make_client(account: str) -> Peer:
    peer = Peer(CLIENT, account)
    return peer


@pytest.fixture
def r() -> Router:
    return Router()


def test_owner_and_shared_accounts_reach_only(r: Router) -> None:
    agent = make_agent("alice", "lab-pi", ("bob",))
    r.add_agent(agent)
    assert rt.can_reach("alice", agent)
    assert rt.can_reach("bob", agent)
    assert not rt.can_reach("carol", agent)
    assert r.resolve("alice", "lab-pi") is agent
    assert r.resolve("bob", "lab-pi") is agent
    assert r.resolve("bob", "alice/lab-pi") is agent
    refused = r.resolve("carol", "alice/lab-pi")
    assert refused == Refused(
        "agent 'alice/lab-pi' is offline or not shared with account 'carol'", "not_reachable"
    )
    assert isinstance(r.resolve("carol", "lab-pi"), Refused)


def test_own_agent_wins_then_unique_shared_then_ambiguous(r: Router) -> None:
    mine = make_agent("bob", "board")
    alices = make_agent("alice", "board", ("bob", "dave"))
    carols = make_agent("carol", "board", ("dave",))
    for agent in (mine, alices, carols):
        r.add_agent(agent)
    assert r.resolve("bob", "board") is mine
    refused = r.resolve("dave", "board")
    assert isinstance(refused, Refused) and refused.drop == "ambiguous"
    assert "alice/board, carol/board" in refused.reason
    assert r.resolve("dave", "carol/board") is carols
    r.remove(carols, "agent disconnected")
    assert r.resolve("dave", "board") is alices


def test_bad_refs_are_refused_not_crashes(r: Router) -> None:
    for ref in ("", "a/b/c", "x" * 100, "bad name", "/x", "x/"):
        refused = r.resolve("alice", ref)
        assert isinstance(refused, Refused) and refused.drop == "bad_ref", ref


def test_open_maps_both_sides_and_close_forgets(r: Router) -> None:
    agent = make_agent("alice", "lab-pi")
    client = make_client("alice")
    r.add_agent(agent)
    opened = r.open(client, 7, "lab-pi")
    assert isinstance(opened, Opened) and opened.agent is agent
    aid = opened.aid
    assert aid != 0
    assert client.channels[7] == (agent, aid)
    assert agent.channels[aid] == (client, 7)
    second = r.open(client, 8, "alice/lab-pi")
    assert isinstance(second, Opened) and second.aid != aid
    assert r.close(agent, aid) == (client, 7)
    assert 7 not in client.channels and aid not in agent.channels
    assert r.close(agent, aid) is None
    assert r.close(client, 8) == (agent, second.aid)
    assert not agent.channels and not client.channels


def test_open_errors(r: Router) -> None:
    agent = make_agent("alice", "lab-pi")
    client = make_client("alice")
    r.add_agent(agent)
    with pytest.raises(ProtocolError, match="channel 0"):
        r.open(client, 0, "lab-pi")
    r.open(client, 1, "lab-pi")
    with pytest.raises(ProtocolError, match="already open"):
        r.open(client, 1, "lab-pi")
    refused = r.open(client, 2, "nobody")
    assert isinstance(refused, Refused) and 2 not in client.channels


def test_channel_limit(r: Router) -> None:
    agent = make_agent("alice", "lab-pi")
    r.add_agent(agent)
    client = make_client("alice")
    for cid in range(1, rt.MAX_CHANNELS_PER_CONNECTION + 1):
        assert isinstance(r.open(client, cid, "lab-pi"), Opened)
    refused = r.open(client, 99999, "lab-pi")
    assert isinstance(refused, Refused) and refused.drop == "channel_limit"
    other = make_client("alice")
    refused = r.open(other, 1, "lab-pi")
    assert isinstance(refused, Refused) and "too many open channels" in refused.reason


def test_agent_channel_ids_skip_used_and_wrap(r: Router) -> None:
    agent = make_agent("alice", "lab-pi")
    r.add_agent(agent)
    client = make_client("alice")
    agent.next_channel = 2**32 - 1
    first = r.open(client, 1, "lab-pi")
    second = r.open(client, 2, "lab-pi")
    assert isinstance(first, Opened) and isinstance(second, Opened)
    assert (first.aid, second.aid) == (2**32 - 1, 1)
    agent.next_channel = 1  # 1 is in use: the next id must skip it
    third = r.open(client, 3, "lab-pi")
    assert isinstance(third, Opened) and third.aid == 2


def test_remove_returns_notices_and_is_idempotent(r: Router) -> None:
    agent = make_agent("alice", "lab-pi", ("bob",))
    r.add_agent(agent)
    alice, bob = make_client("alice"), make_client("bob")
    r.open(alice, 1, "lab-pi")
    r.open(bob, 5, "alice/lab-pi")
    notices = r.remove(agent, "agent disconnected")
    assert {(n.peer.account, n.channel, n.reason) for n in notices} == {
        ("alice", 1, "agent disconnected"),
        ("bob", 5, "agent disconnected"),
    }
    assert not alice.channels and not bob.channels and not r.agents
    assert r.remove(agent, "again") == []
    assert isinstance(r.resolve("alice", "lab-pi"), Refused)


def test_client_removal_notifies_agents(r: Router) -> None:
    agent = make_agent("alice", "lab-pi")
    r.add_agent(agent)
    client = make_client("alice")
    opened = r.open(client, 3, "lab-pi")
    assert isinstance(opened, Opened)
    [notice] = r.remove(client, "client disconnected")
    assert (notice.peer, notice.channel, notice.reason) == (
        agent,
        opened.aid,
        "client disconnected",
    )
    assert not agent.channels


def test_replacement_keeps_the_new_agent(r: Router) -> None:
    old = make_agent("alice", "lab-pi")
    new = make_agent("alice", "lab-pi")
    r.add_agent(old)
    client = make_client("alice")
    r.open(client, 1, "lab-pi")
    assert r.add_agent(new) is old
    notices = r.remove(old, "agent replaced")
    assert [(n.peer, n.reason) for n in notices] == [(client, "agent replaced")]
    assert r.agents[("alice", "lab-pi")] is new
    assert r.resolve("alice", "lab-pi") is new
    r.remove(old, "agent disconnected")  # the old connection's own cleanup: no effect
    assert r.resolve("alice", "lab-pi") is new


def test_list_agents_shape_and_order(r: Router) -> None:
    r.add_agent(make_agent("carol", "z", ("bob",)))
    r.add_agent(make_agent("bob", "m"))
    r.add_agent(make_agent("alice", "a", ("bob",)))
    r.add_agent(make_agent("alice", "hidden"))
    listing = r.list_agents("bob")
    assert [a["agent"] for a in listing] == ["alice/a", "bob/m", "carol/z"]
    assert [a["shared"] for a in listing] == [True, False, True]
    first = listing[0]
    assert set(first) == {"agent", "owner", "name", "key", "connected_at", "shared"}
    assert first["owner"] == "alice" and first["name"] == "a"
    assert str(first["connected_at"]).endswith("Z")


def test_a_name_belongs_to_one_key_at_a_time(r: Router) -> None:
    holder = make_agent("alice", "lab")
    r.add_agent(holder)
    assert r.holder("alice", "lab") is holder and r.holder("bob", "lab") is None
    assert not rt.name_conflict(None, "cd" * 32)  # a free name
    assert not rt.name_conflict(holder, holder.key)  # the same agent reconnecting
    assert rt.name_conflict(holder, "cd" * 32)  # another agent
    assert rt.fingerprint_hex(holder.key) == fingerprint(bytes.fromhex(holder.key))
    text = rt.NameTaken(holder.key, "192.0.2.7:4000", "2026-01-01T00:00:00Z", "n2").message(
        "alice", "lab"
    )
    assert text == (
        "agent name 'lab' is taken for account 'alice' by another agent (key "
        f"{rt.fingerprint_hex(holder.key)}, connected from 192.0.2.7:4000 via relay node n2 since "
        "2026-01-01T00:00:00Z): give this one another name with 'pio-remote agent start -n "
        "NAME', or stop that agent first"
    )
