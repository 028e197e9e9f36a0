"""The memory budget's decisions: credit for client input, per call, session and agent."""

from hypothesis import given, settings
from hypothesis import strategies as st

from pio_remote.agent.membudget import CallCredit, CreditBook

WINDOW = 1000
RESERVE = 50


def book(session_limit: int = 2500, agent_limit: int = 6000) -> CreditBook:
    return CreditBook(
        agent_limit=agent_limit, session_limit=session_limit, window=WINDOW, reserve=RESERVE
    )


def outstanding(b: CreditBook, call: CallCredit) -> int:
    return call.held - b.reserve if call.held else 0


def test_a_call_that_never_reads_holds_nothing():
    b = book()
    sess = b.open_session()
    calls = [b.open_call(sess) for _ in range(64)]
    assert sess.held == 0 and b.agent.held == 0
    for c in calls:
        assert b.close(c) == []
    assert b.agent.held == 0


def test_a_reading_call_gets_a_window_and_a_top_up_after_half():
    b = book(session_limit=10_000, agent_limit=20_000)
    sess = b.open_session()
    c = b.open_call(sess)
    assert b.start_reading(c) == [(c, WINDOW)]  # plenty free: the whole window at once
    assert sess.held == WINDOW + RESERVE
    assert b.consumed(c, WINDOW // 2 - 1) == []
    assert b.consumed(c, 1) == [(c, WINDOW // 2)]
    assert outstanding(b, c) == WINDOW


def test_while_the_budget_is_contended_a_grant_is_a_quarter_of_what_is_free():
    b = book(session_limit=2000, agent_limit=20_000)
    sess = b.open_session()
    first, second = b.open_call(sess), b.open_call(sess)
    assert b.start_reading(first) == [(first, (2000 - RESERVE) // 4)]
    free = 2000 - first.held - RESERVE
    assert b.start_reading(second) == [(second, free // 4)]


def fill(b: CreditBook, sess) -> list[CallCredit]:
    """Readers until the next one finds nothing free and queues; returns them all."""
    calls = []
    while True:
        c = b.open_call(sess)
        calls.append(c)
        if not b.start_reading(c):
            assert c in b.waiting
            return calls


def test_a_session_past_its_budget_waits_and_is_served_when_another_call_reads():
    b = book(session_limit=2100)
    sess = b.open_session()
    *readers, starved = fill(b, sess)
    assert sess.held <= sess.limit and len(readers) > 2
    grants = b.consumed(readers[0], outstanding(b, readers[0]))
    # The queued call is served first; the reader's own top-up waits its turn.
    assert grants[0][0] is starved and grants[0][1] > 0
    assert sess.held <= sess.limit


def test_the_agent_budget_holds_across_sessions():
    b = book(session_limit=3000, agent_limit=3000)
    one, two = b.open_session(), b.open_session()
    *readers, starved = fill(b, one)
    assert b.agent.held <= 3000
    # Session two has room of its own, but the agent has none left: it queues too.
    other = b.open_call(two)
    assert b.start_reading(other) == [] and other in b.waiting
    grants = b.close(readers[0])
    assert [c for c, _ in grants][:2] == [starved, other] or grants[0][0] is starved
    assert b.agent.held <= 3000


def test_closing_a_call_frees_all_it_held_and_serves_the_queue():
    b = book(session_limit=WINDOW + RESERVE)
    sess = b.open_session()
    calls = fill(b, sess)
    for c in calls[:-1]:
        b.close(c)
    assert outstanding(b, calls[-1]) > 0  # the last one was served
    b.close(calls[-1])
    assert sess.held == 0 and b.agent.held == 0 and not b.waiting


def test_a_grant_that_could_not_be_sent_goes_to_the_next_in_line():
    b = book(session_limit=WINDOW + RESERVE)
    sess = b.open_session()
    *readers, queued = fill(b, sess)
    # The client's input on a reader had ended: the shell hands its grant back.
    grants = b.refund(readers[0], outstanding(b, readers[0]))
    assert grants and grants[0][0] is queued
    assert sess.held <= sess.limit


ops = st.lists(
    st.tuples(
        st.sampled_from(["open", "read", "consume", "close"]),
        st.integers(0, 7),
        st.integers(0, 3),
        st.integers(1, 2 * WINDOW),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1200, 4000), st.integers(0, 3))
def test_budgets_are_never_exceeded_and_nobody_starves_for_good(script, session_limit, extra):
    """Any mix of reads, partial reads and ends: the limits hold, held sums add up,
    and once the others end, every queued reader is granted credit."""
    b = book(session_limit=session_limit, agent_limit=session_limit * (1 + extra))
    sessions = [b.open_session() for _ in range(4)]
    calls: dict[int, CallCredit] = {}
    granted: dict[int, int] = {}  # per call: credit granted and not yet read

    def apply(grants: list[tuple[CallCredit, int]]) -> None:
        for call, amount in grants:
            assert amount > 0
            key = next(k for k, v in calls.items() if v is call)
            granted[key] = granted.get(key, 0) + amount

    for op, key, sess, size in script:
        call = calls.get(key)
        if op == "open" and call is None:
            calls[key] = b.open_call(sessions[sess])
        elif op == "read" and call is not None:
            apply(b.start_reading(call))
        elif op == "consume" and call is not None and granted.get(key, 0) > 0:
            amount = min(size, granted[key])
            granted[key] -= amount
            apply(b.consumed(call, amount))
        elif op == "close" and call is not None:
            apply(b.close(call))
            del calls[key]
            granted.pop(key, None)
        assert 0 <= b.agent.held <= b.agent.limit
        for s in sessions:
            assert 0 <= s.held <= s.limit
        assert b.agent.held == sum(s.held for s in sessions)
        for k, c in calls.items():
            assert outstanding(b, c) == granted.get(k, 0) <= WINDOW
    # Everyone but one queued reader leaves: that reader is granted credit.
    for key in list(calls):
        call = calls[key]
        if call in b.waiting:
            for other_key in [k for k in calls if k != key]:
                apply(b.close(calls.pop(other_key)))
                granted.pop(other_key, None)
            assert granted.get(key, 0) > 0
            break


def test_monitor_rings_take_only_the_upper_half_and_give_it_back_to_waiting_calls():
    b = book(session_limit=2500, agent_limit=6000)
    assert b.hold(10_000) == 3000  # rings together: at most half of the agent's budget
    assert b.hold(1) == 0
    first = b.open_call(b.open_session())
    assert b.start_reading(first)  # client input still finds the lower half
    waiting = None
    for _ in range(100):  # more readers until one finds nothing and queues
        c = b.open_call(b.open_session())
        if not b.start_reading(c):
            waiting = c
            break
    assert waiting is not None and waiting in b.waiting
    served = b.unhold(3000)
    assert waiting in [c for c, _ in served] and b.agent.held <= b.agent.limit


@given(st.lists(st.integers(0, 5000), max_size=20))
def test_ring_holds_never_exceed_half_and_balance_out(wants):
    b = book(session_limit=2500, agent_limit=6000)
    got = [b.hold(w) for w in wants]
    assert sum(got) <= 3000 and all(0 <= g <= w for g, w in zip(got, wants, strict=True))
    for g in got:
        b.unhold(g)
    assert b.agent.held == 0


def growing_book(session_limit: int = 50_000) -> CreditBook:
    return CreditBook(
        agent_limit=100_000, session_limit=session_limit, window=WINDOW, reserve=RESERVE,
        step=100, max_window=4 * WINDOW,
    )  # fmt: skip


def test_credit_comes_back_in_steps():
    b = growing_book()
    c = b.open_call(b.open_session())
    assert b.start_reading(c, now=0.0) == [(c, WINDOW)]
    assert b.consumed(c, 99, now=1.0) == []
    assert b.consumed(c, 1, now=1.0) == [(c, 100)]
    assert outstanding(b, c) == WINDOW


def test_a_window_read_in_under_two_round_trips_doubles_up_to_the_cap():
    b = growing_book()
    c = b.open_call(b.open_session())
    b.start_reading(c, now=0.0)
    b.consumed(c, 100, now=1.0)  # first byte one second after the grant: rtt 1 s
    now = 1.0
    for window in (2 * WINDOW, 4 * WINDOW, 4 * WINDOW):
        for _ in range(c.window // 100):
            now += 0.01  # a whole window in well under two round trips
            b.consumed(c, 100, now=now)
        assert c.window == window
    assert outstanding(b, c) == 4 * WINDOW  # capped


def test_a_window_that_takes_longer_than_two_round_trips_stays():
    b = growing_book()
    c = b.open_call(b.open_session())
    b.start_reading(c, now=0.0)
    b.consumed(c, 100, now=0.1)  # rtt 0.1 s
    now = 0.1
    for _ in range(5 * WINDOW // 100):
        now += 0.05  # a window takes 0.5 s: the path, not the credit, sets the pace
        b.consumed(c, 100, now=now)
    assert c.window == WINDOW and outstanding(b, c) == WINDOW


def test_a_grown_window_stays_within_the_session_budget():
    b = growing_book(session_limit=2_000)
    sess = b.open_session()
    c = b.open_call(sess)
    b.start_reading(c, now=0.0)
    now = 1.0
    for _ in range(200):
        now += 0.001
        b.consumed(c, max(1, outstanding(b, c)), now=now)
        assert sess.held <= 2_000
