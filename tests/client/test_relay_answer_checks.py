"""The client's checks of the relay's LIST and OPENED answers (no sockets).

Whatever JSON a relay sends, the checks either accept it or raise RelayError
with one line: never another exception that would surface as a traceback.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from pio_remote.net.link import (
    RelayError,
    check_agent_list,
    check_opened,
    check_welcome,
    error_info,
)
from pio_remote.wire.envelope import Frame, FrameType

KEY = "ab" * 32
ROW = {"agent": "alice/lab", "owner": "alice", "name": "lab", "key": KEY}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
row_like = st.fixed_dictionaries(
    {k: st.one_of(st.just(v), json_values) for k, v in ROW.items()},
    optional={"connected_at": json_values, "node": json_values, "shared": json_values},
)


def test_good_answers_pass() -> None:
    assert check_agent_list([ROW, {**ROW, "node": "n1", "connected_at": "t"}])[0] is ROW
    opened = check_opened({"agent": "alice/lab", "key": KEY})
    assert (opened.agent_id, opened.key) == ("alice/lab", bytes.fromhex(KEY))


def test_a_bad_key_names_its_row() -> None:
    try:
        check_agent_list([ROW, {**ROW, "key": "zz"}])
    except RelayError as exc:
        assert str(exc) == (
            "relay sent a malformed agent list: row 2: 'key' 'zz' is not an agent key "
            "(64 hex digits)"
        )
    else:
        raise AssertionError("accepted")


@given(st.lists(row_like | json_values, max_size=4) | json_values)
def test_any_list_answer_is_accepted_or_one_relay_error(rows: object) -> None:
    try:
        checked = check_agent_list(rows)
    except RelayError as exc:
        assert "\n" not in str(exc)
        return
    for row in checked:
        bytes.fromhex(row["key"])
        assert row["agent"] == f"{row['agent'].split('/')[0]}/{row['agent'].split('/')[1]}"


@given(st.fixed_dictionaries({"agent": json_values, "key": json_values}) | json_values)
def test_any_opened_answer_is_accepted_or_one_relay_error(info: object) -> None:
    try:
        opened = check_opened(info)
    except RelayError as exc:
        assert "\n" not in str(exc)
        return
    assert len(opened.key) == 32


@given(
    json_values | st.fixed_dictionaries({"account": json_values}, optional={"node": json_values})
)
def test_any_welcome_is_accepted_or_one_relay_error(info: object) -> None:
    try:
        account, node = check_welcome(info)
    except RelayError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("relay sent a malformed WELCOME")
        return
    assert isinstance(account, str) and (node is None or isinstance(node, str))


@given(st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_error_frame_gives_a_code_and_a_message(payload: bytes) -> None:
    code, message = error_info(Frame(FrameType.ERROR, 0, payload))
    assert isinstance(code, str) and message
