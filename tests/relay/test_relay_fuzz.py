"""Hypothesis-made bad input: each example closes only the offending connection.

Every example runs against the shared relay process while an agent/client pair
keeps exchanging DATA through it; the pair must not notice anything.
"""

from __future__ import annotations

import itertools
import json

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from relay_testkit import Wire, agent, client, open_channel, wire

from pio_remote.wire import envelope
from pio_remote.wire.envelope import FrameType

_ids = itertools.count()

ANY_TYPE = st.integers(0, 255)
CHANNEL = st.integers(0, envelope.MAX_CHANNEL)
PAYLOAD = st.binary(max_size=64)
NOT_JSON = PAYLOAD.map(lambda b: b"\xff" + b)
RELAY_ONLY = st.sampled_from([FrameType.WELCOME, FrameType.OPENED, FrameType.ERROR])
UNKNOWN_TYPE = st.integers(0x0B, 0xFF) | st.just(0x00)


def frame(
    ftype: st.SearchStrategy[int], channel: st.SearchStrategy[int], payload
) -> st.SearchStrategy:
    return st.builds(lambda t, c, p: envelope.HEADER.pack(t, c) + p, ftype, channel, payload)


def hello(obj: st.SearchStrategy[object]) -> st.SearchStrategy[bytes]:
    return obj.map(lambda o: envelope.HEADER.pack(FrameType.HELLO, 0) + json.dumps(o).encode())


# Bad as the first message on a fresh connection.
BAD_FIRST = st.one_of(
    st.text(max_size=20),  # a text WebSocket message
    st.binary(max_size=4),  # shorter than the envelope header
    frame(ANY_TYPE.filter(lambda t: t != FrameType.HELLO), CHANNEL, PAYLOAD),
    frame(st.just(FrameType.HELLO), st.integers(1, envelope.MAX_CHANNEL), PAYLOAD),
    frame(st.just(FrameType.HELLO), st.just(0), NOT_JSON),
    hello(st.one_of(st.integers(), st.text(), st.lists(st.integers(), max_size=3), st.none())),
    hello(st.fixed_dictionaries({"version": st.just(1), "role": st.text(max_size=8)})),
    hello(
        st.fixed_dictionaries(
            {"version": st.just(1), "role": st.just("agent"), "name": st.text(max_size=70)},
            optional={"key": st.text(max_size=70), "shares": st.lists(st.text(), max_size=3)},
        )
    ),
)

# Bad after a successful HELLO.
BAD_LATER = st.one_of(
    st.text(max_size=20),
    st.binary(max_size=4),
    frame(UNKNOWN_TYPE, CHANNEL, PAYLOAD),
    frame(RELAY_ONLY, CHANNEL, PAYLOAD),
    frame(st.just(FrameType.HELLO), CHANNEL, PAYLOAD),
    frame(st.sampled_from([FrameType.PING, FrameType.PONG]), st.integers(1, 2**32 - 1), PAYLOAD),
    frame(st.just(FrameType.OPEN), st.just(0), PAYLOAD),
    frame(st.just(FrameType.OPEN), st.integers(1, 9), NOT_JSON),  # ref is not UTF-8
)
BAD_FROM_AGENT = frame(st.sampled_from([FrameType.OPEN, FrameType.LIST]), CHANNEL, PAYLOAD)

OVERSIZED = st.integers(1, 5000).map(
    lambda extra: bytes([FrameType.DATA]) + bytes(envelope.MAX_FRAME_SIZE + extra - 1)
)

CASES = st.one_of(
    st.tuples(st.sampled_from(["agent", "client"]), st.just(False), BAD_FIRST),
    st.tuples(st.sampled_from(["agent", "client"]), st.just(True), BAD_LATER),
    st.tuples(st.just("agent"), st.just(True), BAD_FROM_AGENT),
    st.tuples(st.sampled_from(["agent", "client"]), st.booleans(), OVERSIZED),
)


class Rounds:
    """Round trips the pump has made; ``reach(n)`` returns once it has made ``n``."""

    def __init__(self) -> None:
        self.count = 0
        self._made = trio.Event()

    def made(self) -> None:
        self.count += 1
        self._made.set()
        self._made = trio.Event()

    async def reach(self, n: int) -> None:
        while self.count < n:
            await self._made.wait()


async def pump(cli: Wire, agt: Wire, aid: int, rounds: Rounds) -> None:
    """Keep DATA going client -> agent -> client until cancelled."""
    for n in itertools.count():
        payload = n.to_bytes(4, "big") * 16
        await cli.send(FrameType.DATA, 1, payload)
        got = await agt.expect(FrameType.DATA)
        assert (got.channel, got.payload) == (aid, payload)
        await agt.send(FrameType.DATA, aid, payload[::-1])
        back = await cli.expect(FrameType.DATA)
        assert (back.channel, back.payload) == (1, payload[::-1])
        rounds.made()


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=CASES)
async def test_bad_input_closes_only_that_connection(relay, tokens, case) -> None:
    role, greet, message = case
    name = f"fuzz-{next(_ids)}"
    async with (
        agent(relay.url, tokens["alice"], name) as agt,
        client(relay.url, tokens["alice"]) as cli,
    ):
        aid, _ = await open_channel(cli, agt, 1, name)
        rounds = Rounds()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, cli, agt, aid, rounds)
            async with wire(relay.url, tokens["bob"], role) as bad:
                if greet:
                    if role == "agent":
                        await bad.hello_agent(f"{name}-bad")
                    else:
                        await bad.hello_client()
                await bad.send_raw(message)
                oversized = len(message) > envelope.MAX_FRAME_SIZE
                error = await bad.expect_error("oversized" if oversized else "malformed")
                assert error["message"]
                assert await bad.closed() == (1009 if oversized else 4400)
            with trio.fail_after(5):  # the pair goes on as if nothing happened
                await rounds.reach(rounds.count + 2)
            nursery.cancel_scope.cancel()
