"""agent.toml's [[forward]] entries as the agent matches them, and destination names."""

from __future__ import annotations

import pytest

from pio_remote.agent import config
from pio_remote.agent.forward import allowed, describe
from pio_remote.net import tunnel


def load(tmp_path, text: str) -> config.AgentConfig:
    (tmp_path / config.CONFIG_FILE).write_text(text)
    return config.load(tmp_path)


def test_destinations_match_by_canonical_name(tmp_path):
    cfg = load(
        tmp_path,
        '[[forward]]\nallow = ["127.0.0.1:3333", "LocalHost:2331"]\nport = "/dev/ttyACM0"\n'
        '[[forward]]\nallow = ["[::1]:4444"]\n',
    )
    assert allowed(cfg.forward, "localhost:2331") is cfg.forward[0]
    assert allowed(cfg.forward, "[::1]:4444") is cfg.forward[1]
    assert allowed(cfg.forward, "127.0.0.1:2331") is None  # names compare as written
    assert allowed(cfg.forward, "127.0.0.1:3334") is None
    assert describe(cfg.forward) == [
        {"forward": "127.0.0.1:3333", "port": "/dev/ttyACM0"},
        {"forward": "localhost:2331", "port": "/dev/ttyACM0"},
        {"forward": "[::1]:4444", "port": None},
    ]


def test_no_forward_section_means_nothing_is_forwarded(tmp_path):
    cfg = load(tmp_path, 'name = "x"\n')
    assert cfg.forward == [] and describe(cfg.forward) == []
    assert allowed(cfg.forward, "127.0.0.1:3333") is None


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


@pytest.mark.parametrize("text", ["", "3333", "host:", "host:port", "host:0", "[::1]", "[]:1"])
def test_bad_destinations_are_refused(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        tunnel.canonical(text)
