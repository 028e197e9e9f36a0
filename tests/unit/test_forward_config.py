"""agent.toml's [[forward]] entries and the destination names the agent compares."""

from __future__ import annotations

import re

import pytest

from pio_remote import home, tunnel
from pio_remote.agent.forward import allowed, describe


def load(tmp_path, text: str) -> home.AgentConfig:
    (tmp_path / "agent.toml").write_text(text)
    return home.load_agent_config(tmp_path)


def test_forward_entries_are_parsed_with_optional_port(tmp_path):
    config = load(
        tmp_path,
        '[[forward]]\nallow = ["127.0.0.1:3333", "LocalHost:2331"]\nport = "/dev/ttyACM0"\n'
        '[[forward]]\nallow = ["[::1]:4444"]\n',
    )
    assert config.forwards == [
        home.Forward(["127.0.0.1:3333", "localhost:2331"], "/dev/ttyACM0"),
        home.Forward(["[::1]:4444"], None),
    ]
    assert allowed(config.forwards, "[::1]:4444") == config.forwards[1]
    assert allowed(config.forwards, "127.0.0.1:2331") is None  # names compare as written
    assert describe(config.forwards)[1] == {"forward": "localhost:2331", "port": "/dev/ttyACM0"}


def test_no_forward_section_means_nothing_is_forwarded(tmp_path):
    assert load(tmp_path, 'name = "x"\n').forwards == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[forward]]\nport = '/dev/ttyACM0'\n", "needs allow ="),
        ("[[forward]]\nallow = '127.0.0.1:3333'\n", "needs allow ="),
        ("[[forward]]\nallow = [3333]\n", "needs allow ="),
        ("[[forward]]\nallow = ['127.0.0.1']\n", "is not HOST:PORT"),
        ("[[forward]]\nallow = ['127.0.0.1:99999']\n", "is not HOST:PORT"),
        ("[[forward]]\nallow = [':3333']\n", "is not HOST:PORT"),
        ("[[forward]]\nallow = ['127.0.0.1:3333']\nport = 3\n", "port must be a device path"),
        ("[[forward]]\nallow = ['127.0.0.1:3333']\nalow = []\n", "unknown key(s) alow"),
        ("forward = 'x'\n", "must be a list of [[forward]] tables"),
    ],
)
def test_bad_forward_entries_name_the_problem(tmp_path, text, problem):
    with pytest.raises(home.ConfigError, match=re.escape(problem)):
        load(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:3333", "127.0.0.1:3333"),
        (" Board.local:2331 ", "board.local:2331"),
        ("[::1]:3333", "[::1]:3333"),
        ("::1:3333", "[::1]:3333"),
    ],
)
def test_canonical_destinations(text, expected):
    assert tunnel.canonical(text) == expected


@pytest.mark.parametrize("text", ["", "3333", "host:", "host:port", "host:0", "[::1]"])
def test_bad_destinations_are_refused(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        tunnel.canonical(text)
