"""The sans-IO session protocol: calls, credits, EOF, results, and refusals."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pio_remote.wire import session as s


def pair():
    return s.Session(s.Role.CLIENT), s.Session(s.Role.AGENT)


def test_call_round_trip_with_data_and_result():
    client, agent = pair()
    call_id, msg = client.start_call("device.list", {"x": 1})
    [started] = agent.receive(msg)
    assert started == s.CallStarted(call_id, "device.list", {"x": 1})
    [data] = client.receive(agent.send_data(call_id, b"hello"))
    assert data == s.Data(call_id, b"hello")
    [result] = client.receive(agent.send_result(call_id, True, [1, 2]))
    assert result == s.CallResult(call_id, True, [1, 2])
    assert not client.is_open(call_id) and not agent.is_open(call_id)


def test_error_result_carries_code_and_message():
    client, agent = pair()
    call_id, msg = client.start_call("m")
    agent.receive(msg)
    [result] = client.receive(agent.send_result(call_id, False, code="no_port", message="gone"))
    assert (result.ok, result.error_code, result.error_message) == (False, "no_port", "gone")


def test_sending_beyond_credit_is_a_local_error():
    client, agent = pair()
    call_id, msg = client.start_call("upload")
    agent.receive(msg)
    client.receive(agent.grant(call_id, s.INITIAL_WINDOW))
    chunk = b"x" * s.MAX_BODY
    sent = 0
    while sent + len(chunk) <= s.INITIAL_WINDOW:
        agent.receive(client.send_data(call_id, chunk))
        sent += len(chunk)
    with pytest.raises(s.LocalProtocolError, match="credit"):
        client.send_data(call_id, chunk)


def test_peer_overrunning_credit_is_a_remote_error():
    client, agent = pair()
    call_id, msg = client.start_call("upload")
    agent.receive(msg)
    rogue = s.Session(s.Role.CLIENT)  # same ids, but ignores the window
    rogue._calls[call_id] = s._CallState(send_credit=10 * s.INITIAL_WINDOW)
    with pytest.raises(s.RemoteProtocolError, match="credit"):
        for _ in range(s.INITIAL_WINDOW // s.MAX_BODY + 2):
            agent.receive(rogue.send_data(call_id, b"x" * s.MAX_BODY))


def test_credit_is_granted_after_half_a_window_is_consumed():
    """The agent-to-client direction: the client grants back what it read."""
    client, agent = pair()
    call_id, msg = client.start_call("m")
    agent.receive(msg)
    assert client.consumed(call_id, s.CREDIT_THRESHOLD - 1) is None
    grant = client.consumed(call_id, 1)
    assert grant is not None
    before = agent.send_credit(call_id)
    [ev] = agent.receive(grant)
    assert ev == s.CreditGranted(call_id, s.CREDIT_THRESHOLD)
    assert agent.send_credit(call_id) == before + s.CREDIT_THRESHOLD


def test_client_input_waits_for_the_agents_grant():
    """A call's input starts with no credit: a client that sends first broke the protocol."""
    client, agent = pair()
    call_id, msg = client.start_call("upload")
    agent.receive(msg)
    assert client.send_credit(call_id) == 0
    with pytest.raises(s.LocalProtocolError, match="credit"):
        client.send_data(call_id, b"x")
    with pytest.raises(s.LocalProtocolError, match="EVENT without credit"):
        client.send_event(call_id, {"baud": 9600})
    rogue = s.Session(s.Role.CLIENT)
    rogue._calls[call_id] = s._CallState()  # believes in the old implicit window
    with pytest.raises(s.RemoteProtocolError, match="credit"):
        agent.receive(rogue.send_data(call_id, b"x"))
    with pytest.raises(s.RemoteProtocolError, match="without credit"):
        agent.receive(rogue.send_event(call_id, {"baud": 9600}))
    [ev] = client.receive(agent.grant(call_id, 10))
    assert ev == s.CreditGranted(call_id, 10)
    [data] = agent.receive(client.send_data(call_id, b"0123456789"))
    assert data == s.Data(call_id, b"0123456789")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=s.MAX_BODY), min_size=1, max_size=80))
def test_credit_loop_never_overruns_and_always_progresses(sizes):
    """A sender that respects credit, and a reader that grants it back, never deadlock."""
    client, agent = pair()
    call_id, msg = client.start_call("stream")
    agent.receive(msg)
    client.receive(agent.grant(call_id, s.INITIAL_WINDOW))
    delivered = consumed = 0
    for size in sizes:
        remaining = size
        while remaining:
            n = min(remaining, client.send_credit(call_id))
            assert n > 0, "sender starved: credit was never granted back"
            for ev in agent.receive(client.send_data(call_id, b"z" * n)):
                assert isinstance(ev, s.Data)
                delivered += len(ev.data)
                consumed += len(ev.data)
                if consumed >= s.CREDIT_THRESHOLD:
                    client.receive(agent.grant(call_id, consumed))
                    consumed = 0
            remaining -= n
    assert delivered == sum(sizes)


def test_eof_then_data_is_refused_both_ways():
    client, agent = pair()
    call_id, msg = client.start_call("m")
    agent.receive(msg)
    [eof] = agent.receive(client.send_eof(call_id))
    assert eof == s.EndOfStream(call_id)
    with pytest.raises(s.LocalProtocolError):
        client.send_data(call_id, b"late")
    rogue = s.Session(s.Role.CLIENT)
    rogue._calls[call_id] = s._CallState()
    with pytest.raises(s.RemoteProtocolError, match="after EOF"):
        agent.receive(rogue.send_data(call_id, b"late"))


def test_roles_are_enforced():
    client, agent = pair()
    with pytest.raises(s.LocalProtocolError):
        agent.start_call("x")
    call_id, msg = client.start_call("x")
    agent.receive(msg)
    with pytest.raises(s.RemoteProtocolError):
        client.receive(msg)  # a CALL sent to the client
    with pytest.raises(s.RemoteProtocolError):
        agent.receive(msg)  # the same call id twice


def test_messages_for_ended_calls_are_dropped_but_unknown_ids_are_errors():
    client, agent = pair()
    call_id, msg = client.start_call("x")
    agent.receive(msg)
    late = agent.send_data(call_id, b"crossed the cancel")
    client.receive(agent.send_result(call_id, True))
    assert client.receive(late) == []
    with pytest.raises(s.RemoteProtocolError, match="never opened"):
        client.receive(s._pack(s.Kind.DATA, 999, b"x"))


def test_goaway_and_ping():
    client, agent = pair()
    [ping] = agent.receive(client.send_ping(42))
    assert ping == s.Ping(42)
    assert client.receive(agent.pong(42)) == [s.Pong(42)]
    [bye] = client.receive(agent.send_goaway("not_paired", "pair first"))
    assert bye == s.GoAway("not_paired", "pair first")
    with pytest.raises(s.RemoteProtocolError):
        client.receive(agent.pong(1))


def test_too_many_open_calls():
    client, agent = pair()
    for _ in range(s.MAX_OPEN_CALLS):
        agent.receive(client.start_call("x")[1])
    with pytest.raises(s.LocalProtocolError):
        client.start_call("x")
    rogue = s._pack(s.Kind.CALL, 10_000, b'{"method":"x"}')
    with pytest.raises(s.RemoteProtocolError, match="calls open"):
        agent.receive(rogue)


def expected_from_fresh(role: s.Role, message: bytes) -> list | None:
    """What a fresh session must make of ``message``: its events, or None for an error.

    An independent reading of the protocol table in session.py: with no call
    open, only PING, PONG, a well-formed CALL (to an agent) and a well-formed
    GOAWAY (to a client) are acceptable; everything else is a protocol error.
    """
    if len(message) < s.HEADER.size:
        return None
    raw_kind, call_id = s.HEADER.unpack_from(message)
    body = message[s.HEADER.size :]
    if raw_kind == s.Kind.PING:
        return [s.Ping(call_id)]
    if raw_kind == s.Kind.PONG:
        return [s.Pong(call_id)]
    try:
        obj = json.loads(body) if len(body) <= s.MAX_JSON_BODY else None
    except ValueError:
        return None
    if raw_kind == s.Kind.GOAWAY and role is s.Role.CLIENT and isinstance(obj, dict):
        return [s.GoAway(str(obj.get("code", "")), str(obj.get("message", "")))]
    if raw_kind == s.Kind.CALL and role is s.Role.AGENT and call_id >= 1:
        if isinstance(obj, dict) and isinstance(obj.get("method"), str):
            params = obj.get("params") or {}
            if isinstance(params, dict):
                return [s.CallStarted(call_id, obj["method"], params)]
    return None


def check_fresh(message: bytes) -> None:
    for role in s.Role:
        want = expected_from_fresh(role, message)
        if want is None:
            with pytest.raises(s.RemoteProtocolError):
                s.Session(role).receive(message)
        else:
            assert s.Session(role).receive(message) == want


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_is_refused_or_parsed_exactly(data):
    check_fresh(data)


JSON_BODIES = st.one_of(
    st.binary(max_size=64),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=6,
    ).map(lambda obj: json.dumps(obj).encode()),
    st.fixed_dictionaries(
        {"method": st.text(max_size=8) | st.integers()},
        optional={"params": st.none() | st.integers() | st.dictionaries(st.text(), st.integers())},
    ).map(lambda obj: json.dumps(obj).encode()),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(s.Kind)), st.integers(0, 2**32 - 1), JSON_BODIES)
def test_well_framed_garbage_is_refused_or_parsed_exactly(kind, call_id, body):
    check_fresh(s.HEADER.pack(kind, call_id) + body)


def test_session_message_size_matches_the_noise_limit():
    from pio_remote.wire import e2e

    assert s.NOISE_MAX_PLAINTEXT == e2e.MAX_PLAINTEXT
