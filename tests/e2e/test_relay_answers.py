"""A relay that sends a malformed LIST row or OPENED: one line from the CLI, no traceback.

The relay is not trusted with anything but routing; a broken or hostile one must
not crash ``agent list``, ``agent pair`` or a session command. The fake relay
(fakerelay.py) is a real process speaking the real envelope over WebSocket.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import PY, Env
from proctools import Proc

from pio_remote.wire.invite import Invite

ERROR = 1  # docs/cli.md: a RelayError the message explains
HERE = Path(__file__).resolve().parent


def good_row(key: str) -> dict[str, object]:
    return {"agent": "alice/lab-pi", "owner": "alice", "name": "lab-pi", "key": key,
            "connected_at": "2026-01-01T00:00:00Z", "shared": False}  # fmt: skip


def fake_relay(procs: list[Proc], rows: object, opened: object, welcome: object = "") -> str:
    args = [json.dumps(rows), json.dumps(opened)] + ([json.dumps(welcome)] if welcome else [])
    proc = Proc([PY, str(HERE / "fakerelay.py"), *args])
    procs.append(proc)
    return proc.wait_for(r"fake relay listening on (ws://\S+)").group(1)


@pytest.fixture
def procs():
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.stop()


def desk(tmp_path: Path, url: str) -> Env:
    home = tmp_path / "desk"
    home.mkdir(exist_ok=True)
    return Env(home, {"PIO_REMOTE_RELAY": url, "PIO_REMOTE_AUTH_TOKEN": "t" * 43})


def one_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert result.returncode == ERROR, (result.returncode, result.stderr)
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def an_invite(tmp_path: Path) -> tuple[str, str]:
    """(invite, agent key hex) made by a real agent home."""
    lab = Env(tmp_path / "lab")
    lab.home.mkdir()
    invite = lab.cli("agent", "invite", "-n", "lab-pi").stdout.strip()
    return invite, Invite.decode(invite).agent_key.hex()


@pytest.mark.parametrize(
    ("rows", "words"),
    [
        ([good_row("zz")], ("malformed agent list", "row 1", "'key' 'zz'")),
        ([good_row("ab" * 32), 7], ("malformed agent list", "row 2", "not a JSON object")),
        ([{**good_row("ab" * 32), "name": "x\x1b[2Jy"}], ("malformed agent list", "'name'")),
    ],
)
def test_malformed_list_is_one_line(tmp_path, procs, rows, words):
    url = fake_relay(procs, rows, {})
    line = one_line(desk(tmp_path, url).cli("agent", "list", check=False), *words)
    assert "\x1b" not in line
    invite, _ = an_invite(tmp_path)
    one_line(desk(tmp_path, url).cli("agent", "pair", invite, check=False), *words)


@pytest.mark.parametrize(
    ("opened", "words"),
    [
        ({"agent": "alice/lab-pi", "key": "zz"}, ("malformed OPENED", "'key' 'zz'")),
        ({"agent": "alice/lab-pi", "key": "ab"}, ("malformed OPENED", "64 hex")),
        ({"agent": ["x"], "key": "ab" * 32}, ("malformed OPENED", "'agent'")),
        ([1, 2], ("malformed OPENED", "not a JSON object")),
    ],
)
def test_malformed_opened_is_one_line(tmp_path, procs, opened, words):
    invite, key = an_invite(tmp_path)
    url = fake_relay(procs, [good_row(key)], opened)
    one_line(desk(tmp_path, url).cli("agent", "pair", invite, check=False), *words)
    # A fan-out command reports each agent's error on its own line (stdout), exit 1.
    result = desk(tmp_path, url).cli("-a", "alice/lab-pi", "device", "list", check=False)
    assert "Traceback" not in result.stdout + result.stderr, result
    assert result.returncode == ERROR, result
    assert [line for line in result.stdout.splitlines() if words[0] in line], result


@pytest.mark.parametrize(
    ("welcome", "words"),
    [
        (["alice"], ("malformed WELCOME", "not a JSON object")),
        ({"version": 1}, ("malformed WELCOME", "'account' None")),
        ({"version": 1, "account": "alice", "node": 3}, ("malformed WELCOME", "'node' 3")),
    ],
)
def test_malformed_welcome_is_one_line(tmp_path, procs, welcome, words):
    url = fake_relay(procs, [], {}, welcome)
    one_line(desk(tmp_path, url).cli("agent", "list", check=False), *words)
