"""The trust files: locked read-modify-writes across processes, and damaged files
that get one clear line instead of a traceback (issue 8 items 3 and 15)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Env

from pio_remote.agent import allowlist as trust
from pio_remote.client import pins
from pio_remote.home import ConfigError

KEY = bytes(range(32))
ROUNDS = 150

CREATE = f"""
import sys
from pathlib import Path
from pio_remote.agent import allowlist as trust
home = Path(sys.argv[1])
for _ in range({ROUNDS}):
    print(trust.create_invite(home, "lab", bytes(32), 3600).invite_id.hex(), flush=True)
"""

CONSUME = """
import sys
from pathlib import Path
from pio_remote.agent import allowlist as trust
home = Path(sys.argv[1])
for line in open(sys.argv[2]):
    trust.consume_invite(home, bytes.fromhex(line.strip()))
"""


def test_invites_consumed_by_one_process_never_come_back_while_another_creates(tmp_path):
    """`agent invite` and the agent's pairing race on invites.json: with a lock around
    each read-modify-write, no consumed invite is resurrected and no new one is lost."""
    used = [trust.create_invite(tmp_path, "lab", KEY, 3600).invite_id for _ in range(ROUNDS)]
    ids = tmp_path / "used.txt"
    ids.write_text("".join(i.hex() + "\n" for i in used))
    creator = subprocess.Popen(
        [sys.executable, "-c", CREATE, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    consumer = subprocess.Popen([sys.executable, "-c", CONSUME, str(tmp_path), str(ids)])
    created, _ = creator.communicate(timeout=120)
    assert consumer.wait(timeout=120) == 0 and creator.returncode == 0
    invites = json.loads((tmp_path / trust.INVITES_FILE).read_text())
    resurrected = [i.hex() for i in used if i.hex() in invites]
    assert resurrected == []
    assert set(created.split()) == set(invites)
    assert trust.consume_invite(tmp_path, used[0]) is False  # used is used


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('["lab"]', "must hold a JSON object"),
        ('{"alice/lab": "zz"}', "the key pinned for agent 'alice/lab' is not 64 hex digits"),
        ('{"alice/lab": 7}', "is not 64 hex digits"),
        ("{", "is not valid JSON"),
    ],
)
def test_damaged_known_agents_file_is_one_line_naming_the_file_and_the_fix(
    tmp_path, content, message
):
    (tmp_path / pins.KNOWN_AGENTS_FILE).write_text(content)
    with pytest.raises(ConfigError, match=message) as err:
        pins.pinned_key(tmp_path, "alice/lab")
    assert str(err.value).startswith(str(tmp_path / pins.KNOWN_AGENTS_FILE))
    assert "fix or remove it" in str(err.value)


def test_damaged_known_agents_file_through_the_cli(world):
    lab, desk = world.machine("lab", "alice"), world.machine("desk", "alice")
    world.start_agent(lab, "lab-pi")
    world.pair(lab, desk, "lab-pi")
    known = desk.home / pins.KNOWN_AGENTS_FILE
    known.write_text('{"alice/lab-pi": "not hex"}')
    result = desk.cli("-a", "lab-pi", "device", "list", check=False)
    assert result.returncode == 2  # a configuration error (docs/cli.md "Exit codes")
    assert "Traceback" not in result.stderr
    assert f"{known}: the key pinned for agent 'alice/lab-pi' is not 64 hex digits" in (
        result.stderr
    )


def test_damaged_allow_list_is_named(tmp_path):
    (tmp_path / trust.AUTHORIZED_CLIENTS_FILE).write_text('{"nothex": {}}')
    with pytest.raises(ConfigError, match=r"authorized_clients.json: entry 'nothex' is damaged"):
        trust.is_authorized(tmp_path, KEY, bytes(32))
    result = Env(tmp_path).cli("agent", "clients", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "entry 'nothex' is damaged" in result.stderr


def test_home_that_is_a_regular_file_is_one_line(tmp_path):
    home_file = tmp_path / "home"
    home_file.write_text("oops")
    machine = Env(home_file)
    for args in (["agent", "invite"], ["agent", "list"], ["agent", "start"], ["agent", "clients"]):
        result = machine.cli(*args, check=False)
        assert result.returncode in (1, 2), result
        assert "Traceback" not in result.stderr
        assert f"PIO_REMOTE_HOME={home_file} is not a directory" in result.stderr


def test_home_that_is_not_writable_is_one_line(tmp_path):
    home_dir = tmp_path / "home"
    home_dir.mkdir(mode=0o500)
    machine = Env(home_dir)
    argv = ["agent", "invite"]
    if Path("/proc/self").stat().st_uid == 0:
        pytest.skip("root writes anywhere: run the suite as a normal user for this case")
    result = machine.cli(*argv, check=False)
    assert "Traceback" not in result.stderr
    assert f"{home_dir} is not writable" in result.stderr


def test_home_not_writable_message_when_running_as_root(tmp_path, monkeypatch):
    """Root writes anywhere, so here the permission answer is the one thing faked."""
    from pio_remote import home

    monkeypatch.setenv("PIO_REMOTE_HOME", str(tmp_path))
    monkeypatch.setattr(home.os, "access", lambda path, mode: False)
    with pytest.raises(ConfigError, match=f"{tmp_path} is not writable by this user: fix"):
        home.home_dir()


def test_damaged_credentials_file_is_one_line(tmp_path):
    (tmp_path / "credentials.json").write_text('["ws://x", "token"]')
    result = Env(tmp_path).cli("agent", "list", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "credentials.json must hold" in result.stderr


OWN = bytes([9] * 32)


def test_the_role_is_the_agents_own_record_and_old_entries_are_clients(tmp_path):
    plain, owner, old, odd = (bytes([n] * 32) for n in (1, 2, 3, 4))
    trust.authorize_client(tmp_path, plain, "desk", account="alice")
    trust.authorize_client(tmp_path, owner, "laptop", role=trust.OWNER, account="bob")
    entries = json.loads((tmp_path / trust.AUTHORIZED_CLIENTS_FILE).read_text())
    entries[old.hex()] = {"label": "before roles", "paired_at": 1}
    entries[odd.hex()] = {"label": "hand-edited", "role": "OWNER"}
    (tmp_path / trust.AUTHORIZED_CLIENTS_FILE).write_text(json.dumps(entries))
    assert trust.role_of(tmp_path, OWN, OWN) == trust.OWNER  # the agent's own key
    assert trust.role_of(tmp_path, OWN, owner) == trust.OWNER
    assert trust.role_of(tmp_path, OWN, plain) == trust.CLIENT  # "alice" is no proof
    assert trust.role_of(tmp_path, OWN, old) == trust.CLIENT
    assert trust.role_of(tmp_path, OWN, odd) == trust.CLIENT  # only exactly "owner"
    assert trust.role_of(tmp_path, OWN, bytes(32)) is None
    with pytest.raises(ValueError):
        trust.authorize_client(tmp_path, plain, "x", role="admin")


def test_an_owner_invite_grants_its_role_and_label_once_and_keeps_them_off_the_text(tmp_path):
    from pio_remote.agent import pairing

    grant = trust.InviteGrant(trust.OWNER, "alice laptop")
    invite = trust.create_invite(tmp_path, "lab", KEY, 3600, grant)
    plain = trust.create_invite(tmp_path, "lab", KEY, 3600)
    assert len(invite.encode()) == len(plain.encode())  # the role is not in the text
    assert "owner" not in invite.encode() and "laptop" not in invite.encode()
    client = bytes([5] * 32)
    assert pairing.confirm(tmp_path, invite.invite_id, client, "x1", "alice") == grant
    assert pairing.confirm(tmp_path, invite.invite_id, bytes(32), "x2", "bob") is None
    entry = trust.authorized_clients(tmp_path)[client.hex()]
    assert entry["role"] == "owner" and entry["account"] == "alice"
    assert (entry["label"], entry["client_label"]) == ("alice laptop", "x1")
    other = bytes([6] * 32)
    assert pairing.confirm(tmp_path, plain.invite_id, other, "ci", "bob") == trust.InviteGrant()
    entry = trust.authorized_clients(tmp_path)[other.hex()]
    assert (entry["role"], entry["label"], entry["account"]) == ("client", "ci", "bob")
