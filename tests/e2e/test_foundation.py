"""Relay + agent + client as real processes on 127.0.0.1 (issue: foundation)."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest
from wsproxy import Proxy, WsFrameTamper

from pio_remote.wire import envelope


@pytest.fixture
def lab(world, tmp_path):
    """alice's agent 'lab-pi' with one pty board, and alice's desk paired with it."""
    board = tmp_path / "vb" / "board0"
    world.board(board)
    agent_machine = world.machine("lab", "alice")
    desk = world.machine("desk", "alice")
    agent = world.start_agent(agent_machine, "lab-pi", "--port-glob", str(tmp_path / "vb" / "*"))
    world.pair(agent_machine, desk, "lab-pi")
    return world, agent_machine, desk, agent, board


def test_agent_list_and_device_list_json_and_table(lab):
    world, _, desk, _, board = lab
    agents = json.loads(desk.cli("agent", "list", "--json-output").stdout)
    assert [a["agent"] for a in agents] == ["alice/lab-pi"]
    table = desk.cli("agent", "list").stdout
    assert "lab-pi" in table and "alice" in table

    devices = json.loads(desk.cli("device", "list", "--json-output").stdout)
    assert list(devices) == ["lab-pi"]
    assert all(set(d) == {"port", "description", "hwid"} for d in devices["lab-pi"])
    assert {
        "port": str(board),
        "description": f"pseudo-terminal {os.path.realpath(board)}",
        "hwid": "n/a",
    } in devices["lab-pi"]
    out = desk.cli("-a", "lab-pi", "device", "list").stdout
    assert "Agent lab-pi" in out and str(board) in out


def test_secrets_are_private_files(lab):
    _, agent_machine, desk, _, _ = lab
    for home, names in [
        (agent_machine.home, ["identity.key", "authorized_clients.json", "invites.json"]),
        (desk.home, ["identity.key", "known_agents.json"]),
    ]:
        for name in names:
            mode = stat.S_IMODE((home / name).stat().st_mode)
            assert mode == 0o600, f"{name} has mode {oct(mode)}"


def test_same_identity_needs_no_pairing(world, tmp_path):
    world.board(tmp_path / "vb" / "b")
    machine = world.machine("solo", "carol")
    world.start_agent(machine, "bench", "--port-glob", str(tmp_path / "vb" / "*"))
    devices = json.loads(machine.cli("device", "list", "--json-output").stdout)
    assert str(tmp_path / "vb" / "b") in [d["port"] for d in devices["bench"]]


def test_unpaired_client_is_refused_by_the_agent(lab):
    world, *_ = lab
    stranger = world.machine("stranger", "alice")  # same account: the relay lets it reach
    # It pins the right key by hand, so only the agent's allow-list stops it.
    agents = json.loads(stranger.cli("agent", "list", "--json-output").stdout)
    assert agents
    known = {"alice/lab-pi": _agent_key(world)}
    (stranger.home / "known_agents.json").write_text(json.dumps(known))
    result = stranger.cli("-a", "lab-pi", "device", "list", check=False)
    assert result.returncode == 1
    assert "does not know this client" in result.stdout + result.stderr
    assert "pio-remote agent pair" in result.stdout + result.stderr


def _agent_key(world) -> str:
    lab_home = world.tmp / "home-lab"
    from pio_remote.wire import e2e

    return e2e.public_key(bytes.fromhex((lab_home / "identity.key").read_text())).hex()


def test_client_without_pin_is_told_to_pair(lab):
    world, *_ = lab
    stranger = world.machine("stranger", "alice")
    result = stranger.cli("-a", "lab-pi", "device", "list", "--json-output", check=False)
    assert result.returncode == 1
    entry = json.loads(result.stdout)["lab-pi"]
    assert "is not paired with this client" in entry["error"]


def test_substituted_agent_key_is_refused_with_both_fingerprints(lab):
    world, _, desk, _, _ = lab
    from pio_remote.wire import e2e

    real = bytes.fromhex(_agent_key(world))
    fake = e2e.public_key(e2e.generate_private_key())
    (desk.home / "known_agents.json").write_text(json.dumps({"alice/lab-pi": fake.hex()}))
    result = desk.cli("-a", "lab-pi", "device", "list", check=False)
    text = result.stdout + result.stderr
    assert result.returncode == 1
    assert e2e.fingerprint(real) in text and e2e.fingerprint(fake) in text


def test_bad_and_revoked_tokens_get_specific_errors(lab):
    world, _, desk, _, _ = lab
    desk.extra["PIO_REMOTE_AUTH_TOKEN"] = "not-a-token"
    result = desk.cli("agent", "list", check=False)
    # A refused token is a configuration error: exit 2 (docs/cli.md).
    assert result.returncode == 2 and "401" in result.stderr and "token" in result.stderr.lower()

    dave = world.machine("dave", "dave")
    dave.cli("agent", "list")
    new_token = world.relay.admin("token", "dave", "--regenerate").stdout.strip()
    # The relay re-reads its token table once a second, and at once for a token it
    # does not know: the new token works right away, and from then on the old fails.
    fresh = world.machine("dave-new", "dave")
    fresh.extra["PIO_REMOTE_AUTH_TOKEN"] = new_token
    fresh.cli("agent", "list")
    result = dave.cli("agent", "list", check=False)
    assert result.returncode == 2 and "401" in result.stderr


def test_relay_enforces_shares(lab, tmp_path):
    world, agent_machine, _, _, _ = lab
    bob = world.machine("bob", "bob")
    result = bob.cli("-a", "alice/lab-pi", "device", "list", check=False)
    assert result.returncode == 1
    assert "offline or not shared" in result.stdout + result.stderr

    # Shared with bob, and bob pairs: now both locks open.
    world.start_agent(
        agent_machine, "shared-pi", "-s", "bob", "--port-glob", str(tmp_path / "vb" / "*")
    )
    invite = agent_machine.cli("agent", "invite", "-n", "shared-pi").stdout.strip()
    bob.cli("agent", "pair", invite)
    devices = json.loads(bob.cli("-a", "alice/shared-pi", "device", "list", "--json-output").stdout)
    assert list(devices) == ["alice/shared-pi"] and devices["alice/shared-pi"]


def test_invite_is_single_use(lab):
    world, agent_machine, _, _, _ = lab
    invite = agent_machine.cli("agent", "invite", "-n", "lab-pi").stdout.strip()
    first = world.machine("c1", "alice")
    first.cli("agent", "pair", invite)
    second = world.machine("c2", "alice")
    result = second.cli("agent", "pair", invite, check=False)
    assert result.returncode == 1 and "invite is unknown, already used or expired" in result.stderr


def test_offline_agent_is_an_error_entry_and_does_not_block_others(lab):
    _, _, desk, _, board = lab
    start = time.monotonic()
    result = desk.cli(
        "-a",
        "lab-pi",
        "-a",
        "ghost",
        "device",
        "list",
        "--json-output",
        "--timeout",
        "5",
        check=False,
    )
    assert time.monotonic() - start < 15
    assert result.returncode == 1
    out = json.loads(result.stdout)
    assert str(board) in [d["port"] for d in out["lab-pi"]]
    assert "offline" in out["ghost"]["error"]


def test_relay_never_sees_plaintext(lab, tmp_path):
    world, agent_machine, _, _, board = lab
    proxy = Proxy(world.relay.port)
    try:
        spy_agent = world.machine("spy-lab", "alice")
        spy_agent.extra["PIO_REMOTE_RELAY"] = proxy.url
        marker_dir = tmp_path / "MARKERPORTDIR"
        world.board(marker_dir / "SECRETBOARD")
        world.start_agent(spy_agent, "spy-pi", "--port-glob", str(marker_dir / "*"))
        client = world.machine("spy-desk", "alice")
        client.extra["PIO_REMOTE_RELAY"] = proxy.url
        invite = spy_agent.cli("agent", "invite", "-n", "spy-pi").stdout.strip()
        client.cli("agent", "pair", invite, "--label", "LABELMARKER")
        out = client.cli("-a", "spy-pi", "device", "list", "--json-output").stdout
        assert "SECRETBOARD" in out  # the client did get the plaintext...
    finally:
        proxy.close()
    recorded = bytes(proxy.recorded)
    assert len(recorded) > 2000  # ...and the relay carried real traffic...
    for secret in [
        b"SECRETBOARD",
        b"MARKERPORTDIR",
        b"pseudo-terminal",
        b"/dev/pts",
        b"LABELMARKER",
        b"device.list",
        b"pair.confirm",
    ]:
        assert secret not in recorded, f"relay saw {secret!r}"  # ...but none of it in clear


def test_tampered_frame_aborts_session_and_agent_keeps_serving(lab):
    world, _, desk, agent, board = lab
    data_frames = {"n": 0}

    def second_data_frame(payload: bytes) -> bool:
        if payload[:1] != bytes([envelope.FrameType.DATA]):
            return False
        data_frames["n"] += 1
        return data_frames["n"] == 2  # 1st: handshake reply; 2nd: the first result

    proxy = Proxy(world.relay.port, tamper=lambda: WsFrameTamper(second_data_frame))
    try:
        desk.extra["PIO_REMOTE_RELAY"] = proxy.url
        result = desk.cli("-a", "lab-pi", "device", "list", check=False)
    finally:
        proxy.close()
    assert result.returncode == 1
    assert "failed authentication" in result.stdout + result.stderr
    desk.extra["PIO_REMOTE_RELAY"] = world.relay.url
    devices = json.loads(desk.cli("-a", "lab-pi", "device", "list", "--json-output").stdout)
    assert str(board) in [d["port"] for d in devices["lab-pi"]]
    assert agent.popen.poll() is None


def test_agent_comes_back_after_relay_restart(lab):
    world, _, desk, agent, _ = lab
    port = world.relay.port
    world.relay.stop()
    world.relay.start(port=port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        result = desk.cli("agent", "list", "--json-output", check=False)
        if result.returncode == 0 and json.loads(result.stdout):
            break
    else:
        raise AssertionError(f"agent not back after relay restart: {agent.lines}")
    assert json.loads(result.stdout)[0]["agent"] == "alice/lab-pi"


def test_second_agent_with_same_name_takes_over(lab, tmp_path):
    world, agent_machine, desk, old_agent, _ = lab
    world.start_agent(agent_machine, "lab-pi")  # the same home (key): the same agent
    assert old_agent.popen.wait(timeout=10) != 0
    assert "another agent named 'lab-pi'" in old_agent.stderr_tail()


def test_agent_stops_cleanly_on_sigterm_and_goes_offline(lab):
    import signal

    _, _, desk, agent, _ = lab
    assert agent.stop(signal.SIGTERM) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if json.loads(desk.cli("agent", "list", "--json-output").stdout) == []:
            break
    else:
        raise AssertionError("agent still listed after SIGTERM")
