"""HELLO validation, without sockets."""

from __future__ import annotations

import pytest

from pio_remote.relay.hello import MAX_SHARES, AgentHello, VersionError, check_hello
from pio_remote.relay.router import ProtocolError

KEY = "AB" * 32
AGENT_HELLO = {"version": 1, "role": "agent", "name": "lab-pi", "shares": ["bob"], "key": KEY}


def test_valid_hellos() -> None:
    assert check_hello({"version": 1, "role": "client"}, "client") is None
    checked = check_hello(AGENT_HELLO, "agent")
    assert checked == AgentHello("lab-pi", frozenset({"bob"}), KEY.lower())
    no_shares = {k: v for k, v in AGENT_HELLO.items() if k != "shares"}
    assert check_hello(no_shares, "agent") == AgentHello("lab-pi", frozenset(), KEY.lower())


@pytest.mark.parametrize("version", [0, 2, 99])
def test_other_versions_are_a_version_error(version: int) -> None:
    with pytest.raises(VersionError, match="version 1"):
        check_hello({"version": version, "role": "client"}, "client")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"version": "1"}, "integer 'version'"),
        ({"version": True}, "integer 'version'"),
        ({"role": "client"}, "/v1/agent"),
        ({"name": "a/b"}, "name"),
        ({"name": ""}, "name"),
        ({"shares": "bob"}, "shares"),
        ({"shares": ["ok", "not ok"]}, "shares"),
        ({"shares": ["x"] * (MAX_SHARES + 1)}, "shares"),
        ({"key": "ab" * 31}, "key"),
        ({"key": "zz" * 32}, "key"),
        ({"key": None}, "key"),
    ],
)
def test_bad_agent_hellos_say_what_is_wrong(change: dict, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        check_hello({**AGENT_HELLO, **change}, "agent")


def test_non_objects_are_refused() -> None:
    for hello in ([], "hello", 1, None):
        with pytest.raises(ProtocolError, match="JSON object"):
            check_hello(hello, "client")
