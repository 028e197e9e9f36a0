"""Who is the owner, and who may occupy the agent before a handshake (issue 15, items 7 and 9).

Real relay, agent and clients on 127.0.0.1. The relay is untrusted: a proxy between
relay and agent plays a relay that relabels OPEN frames, and a raw client opens
channels it never handshakes on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import trio
from conftest import PY, Env, World
from wsproxy import Proxy, WsFrameRewriter

from pio_remote import home
from pio_remote.net import link
from pio_remote.wire import envelope

FAKE_PIO = """\
#!{py}
import json, sys
with open({log!r}, "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
print("PlatformIO Core, version 6.1.16")
"""


def relabel_as(account: str):
    """A relay that lies: every OPEN it sends the agent names ``account`` as the client's."""

    def rewrite(payload: bytes) -> bytes:
        if payload[:1] == bytes([envelope.FrameType.OPEN]):
            return payload[: envelope.HEADER_SIZE] + account.encode()
        return payload

    return rewrite


def pio_runs(log: Path) -> list[list[str]]:
    """What the agent ran with PlatformIO, besides asking its version."""
    if not log.exists():
        return []
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return [c for c in calls if c != ["--version"]]


def owner_invite(agent_machine: Env, name: str, *args: str) -> str:
    return agent_machine.cli("agent", "invite", "-n", name, "--owner", *args).stdout.strip()


def test_relay_relabelling_a_shared_client_as_the_owner_grants_nothing(world: World, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "pio.log"
    (bindir / "pio").write_text(FAKE_PIO.format(py=PY, log=str(log)))
    (bindir / "pio").chmod(0o755)
    board = tmp_path / "vb" / "board0"
    world.board(board)

    rewriters: list[WsFrameRewriter] = []

    def rewriter() -> WsFrameRewriter:
        rewriters.append(WsFrameRewriter(relabel_as("alice")))
        return rewriters[-1]

    proxy = Proxy(world.relay.port, tamper=rewriter)  # between the relay and the agent
    try:
        lab = world.machine("lab", "alice")
        lab.extra["PIO_REMOTE_RELAY"] = proxy.url
        lab.extra["PATH"] = f"{bindir}{os.pathsep}{os.environ['PATH']}"
        world.start_agent(lab, "lab", "-s", "bob", "--port-glob", str(tmp_path / "vb" / "*"))
        desk = world.machine("desk", "alice")  # alice's own account, but a plain client key
        guest = world.machine("guest", "bob")
        world.pair(lab, desk, "lab")
        world.pair(lab, guest, "lab")

        lease = desk.cli("-a", "alice/lab", "device", "lock", "-p", str(board), "--ttl", "10m")
        assert lease.stdout.strip()

        # The attacker's move: bob's paired client, which the relay calls "alice".
        refused = guest.cli("-a", "alice/lab", "update", check=False)
        assert refused.returncode == 1
        assert "only the owner of agent 'alice/lab' may update it" in refused.stderr
        assert "paired as a client" in refused.stderr
        broken = guest.cli(
            "-a", "alice/lab", "device", "unlock", "-p", str(board), "--force", check=False
        )
        assert broken.returncode == 1
        assert "only the owner of agent 'alice/lab' may break another client's lease" in (
            broken.stderr
        )
        # The relay really did relabel bob's sessions (pairing, update, unlock) as alice's.
        assert sum(r.rewritten for r in rewriters) >= 3
        assert pio_runs(log) == []  # nothing ran for bob
        # The lie is on record as information only: bob's key paired from "alice", a client.
        guest_fp = home.load_identity(guest.home).fingerprint
        rows = json.loads(lab.cli("agent", "clients", "--json-output").stdout)
        (recorded,) = [r for r in rows if r["fingerprint"] == guest_fp]
        assert (recorded["role"], recorded["account"]) == ("client", "alice")
        devices = json.loads(desk.cli("-a", "lab", "device", "list", "--json-output").stdout)
        (entry,) = [d for d in devices["lab"] if d["port"] == str(board)]
        assert entry["lease"]["holder"].startswith("alice (client key ")  # still desk's

        # The owner's account is not enough either: desk's key is a plain client.
        assert desk.cli("-a", "lab", "update", check=False).returncode == 1
        assert pio_runs(log) == []

        # A key paired with `agent invite --owner` is the owner, whatever the relay says.
        admin = world.machine("admin", "alice")
        admin.cli("agent", "pair", owner_invite(lab, "lab"))
        admin.cli("-a", "lab", "update", "--dry-run")
        assert pio_runs(log) == [["update", "--dry-run"]]
        released = admin.cli("-a", "lab", "device", "unlock", "-p", str(board), "--force")
        assert f"released lease {lease.stdout.strip()} on {board}" in released.stderr
    finally:
        proxy.close()


def test_agent_clients_shows_role_account_and_label(world: World):
    lab = world.machine("lab", "alice")
    world.start_agent(lab, "lab", "-s", "bob")
    guest = world.machine("guest", "bob")
    invite = lab.cli("agent", "invite", "-n", "lab").stdout.strip()
    guest.cli("agent", "pair", invite, "--label", "bob's CI runner")
    laptop = world.machine("laptop", "alice")
    laptop.cli(
        "agent", "pair", owner_invite(lab, "lab", "--label", "alice laptop"), "--label", "x1"
    )
    guest_fp = home.load_identity(guest.home).fingerprint
    rows = json.loads(lab.cli("agent", "clients", "--json-output").stdout)
    by_label = {r["label"]: r for r in rows}
    assert by_label["bob's CI runner"]["role"] == "client"
    assert by_label["bob's CI runner"]["account"] == "bob"
    assert by_label["alice laptop"]["role"] == "owner"
    assert by_label["alice laptop"]["account"] == "alice"
    assert by_label["alice laptop"]["client_label"] == "x1"  # what the client called itself
    assert by_label["bob's CI runner"]["fingerprint"] == guest_fp

    table = lab.cli("agent", "clients").stdout
    assert "Paired from account" in table and "Role" in table
    bob_line = next(line for line in table.splitlines() if "bob's CI runner" in line)
    assert " client " in bob_line and " bob " in bob_line
    alice_line = next(line for line in table.splitlines() if "alice laptop" in line)
    assert " owner " in alice_line and "(its own name: x1)" in alice_line

    # An entry written before roles existed is a plain client, its account unknown.
    path = lab.home / "authorized_clients.json"
    entries = json.loads(path.read_text())
    entries["ab" * 32] = {"label": "old desk", "paired_at": 1700000000}
    path.write_text(json.dumps(entries))
    old = next(
        r
        for r in json.loads(lab.cli("agent", "clients", "--json-output").stdout)
        if r["label"] == "old desk"
    )
    assert old["role"] == "client" and old["account"] == ""
    assert "(not recorded)" in lab.cli("agent", "clients").stdout


async def test_channels_that_never_handshake_do_not_lock_out_paired_clients(world: World, tmp_path):
    timeout = 3
    lab = world.machine("lab", "alice")
    (lab.home / "agent.toml").write_text(
        f"handshake_timeout = {timeout}\n"
        "max_pending_handshakes = 16\n"
        "max_pending_handshakes_per_account = 8\n"
    )
    agent = world.start_agent(lab, "lab", "-s", "bob")
    desk = world.machine("desk", "alice")
    guest = world.machine("guest", "bob")
    world.pair(lab, desk, "lab")
    world.pair(lab, guest, "lab")
    opened: dict[int, float] = {}
    closed: dict[int, tuple[float, str]] = {}
    all_closed = trio.Event()

    def on_frame(i: int):
        def handler(frame: envelope.Frame) -> None:
            if frame.type is envelope.FrameType.CLOSE:
                closed[i] = (trio.current_time(), frame.payload.decode())
                if len(closed) == len(opened) and stop.is_set():
                    all_closed.set()

        return handler

    stop = trio.Event()

    # The attacker: an unpaired identity of bob's account (the agent is shared with
    # bob), opening channels and never sending a handshake.
    async with link.connect(world.relay.url, world.account("bob"), {"role": "client"}) as lnk:

        async def open_one() -> None:
            i = len(opened)
            opened[i] = -1.0
            await lnk.open_channel("alice/lab", on_frame(i))
            opened[i] = trio.current_time()

        for _ in range(300):
            await open_one()

        async def keep_flooding() -> None:  # bob's share of pending channels stays full
            while not stop.is_set():
                await open_one()
                with trio.move_on_after(0.25):
                    await stop.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_flooding)
            for who in (desk, guest):  # alice's paired client, and bob's own
                result = await trio.to_thread.run_sync(
                    lambda w=who: w.cli("-a", "alice/lab", "device", "list", check=False)
                )
                assert result.returncode == 0, result.stderr
                assert "busy" not in result.stderr
            stop.set()
        if len(closed) == len(opened):
            all_closed.set()
        with trio.fail_after(timeout + 20):
            await all_closed.wait()

    evicted = [i for i, (_, why) in closed.items() if "waiting for a handshake" in why]
    timed_out = [i for i, (_, why) in closed.items() if why == f"no handshake within {timeout} s"]
    assert len(evicted) + len(timed_out) == len(opened) > 300
    assert evicted and "too many channels from account bob" in closed[evicted[0]][1]
    # At most the per-account cap was ever left to wait for its deadline at the end...
    assert 1 <= len(timed_out) <= 8
    for i in timed_out:  # ...and each of those was closed at the deadline, not before
        assert timeout - 0.5 <= closed[i][0] - opened[i] <= timeout + 10
    # The owner hears of it once, not once a channel.
    assert agent.stderr_text().count("account bob keeps channels open without a handshake") == 1
