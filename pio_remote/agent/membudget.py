"""How much of the clients' input the agent may hold in memory: credit as a budget.

A client sends a call's input only on credit the agent granted (session.py), and
what it sends waits in the call's inbox until the handler reads it, so the
credit granted and not yet read *is* the memory a client can make the agent
hold. This module decides every grant, with no I/O (the trio shell in
agent/service.py sends the CREDIT messages it returns):

- a call gets credit only once it reads its input: a call that never reads holds
  nothing;
- a call holds at most its window, topped up each ``step`` bytes read (small
  steps keep a long path busy: with a grant only per half window, half the
  window sits idle for a round trip); while the budget is contended a grant is
  at most a quarter of what is free, so calls that read a burst and then idle
  (a forward, a monitor) leave room for the next ones;
- a call's window starts at ``window`` and doubles, up to ``max_window``, each
  time half a window was read in less than a round trip (Chromium's QUIC
  receivers use a whole window in two): the client was waiting for credit, not the path for
  data, so the window grows toward twice the path's bandwidth-delay product,
  and the budgets below still bound it. The round trip is the call's first
  one: from its first grant to its first byte read (the client sends nothing
  before that grant), so a handler slow to read makes it longer and the window
  grows less, never more;
- a session's calls together hold at most ``session_limit``, and all sessions
  together at most ``agent_limit``;
- a call that finds no credit waits in a queue, first come first served, and is
  granted some as soon as another call reads or ends: backpressure, never an error.

Each call that holds credit also holds ``reserve`` bytes: the one EVENT a client
may send beyond its credit (session.py), so the limits bound events too.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(slots=True)
class Pool:
    """Bytes granted and not yet read, against a limit."""

    limit: int
    held: int = 0

    @property
    def free(self) -> int:
        return self.limit - self.held


Grants = list[tuple["CallCredit", int]]


@dataclass(eq=False, slots=True)
class CallCredit:
    """One call's share: ``held`` counts its reserve, credit granted, and input unread."""

    session: Pool
    owner: object = None  # the shell's handle for the call, to send the CREDIT on
    window: int = 0  # this call's window (grows; see the module docstring)
    first_grant_at: float = -1.0
    rtt: float = 0.0  # 0: not measured yet
    window_started: float = 0.0  # when the current window's worth began to be read
    window_read: int = 0
    reading: bool = False
    held: int = 0
    read_since_grant: int = 0
    closed: bool = False


@dataclass
class CreditBook:
    """Every grant of client input credit on one agent (one instance per agent).

    Each decision returns the grants to send now, as ``(call, bytes)`` pairs: queued
    calls are served before the caller, so nobody overtakes a starved call.
    """

    agent_limit: int
    session_limit: int
    window: int
    reserve: int
    step: int = 0  # bytes read between top-ups; 0: half the window
    max_window: int = 0  # the largest a call's window grows; 0: no growth
    agent: Pool = field(init=False)
    waiting: OrderedDict[CallCredit, None] = field(init=False, default_factory=OrderedDict)

    def __post_init__(self) -> None:
        if not 0 <= self.reserve < self.session_limit <= self.agent_limit or self.window <= 0:
            raise ValueError("need 0 <= reserve < session_limit <= agent_limit, window > 0")
        self.agent = Pool(self.agent_limit)
        self.step = self.step or self.window // 2
        self.max_window = max(self.max_window, self.window)

    def open_session(self) -> Pool:
        return Pool(self.session_limit)

    def open_call(self, session: Pool, owner: object = None) -> CallCredit:
        return CallCredit(session, owner, self.window)

    # ---- decisions ----------------------------------------------------------------------

    def start_reading(self, call: CallCredit, now: float = 0.0) -> Grants:
        """The call reads its input for the first time: its first grant, or a place in the queue."""
        if call.reading or call.closed:
            return []
        call.reading = True
        call.first_grant_at = now
        return self._top_up(call, [])

    def consumed(self, call: CallCredit, amount: int, now: float = 0.0) -> Grants:
        """The handler read ``amount`` bytes: they leave the budget; maybe grant more."""
        self._release(call, amount)
        call.read_since_grant += amount
        self._pace(call, amount, now)
        grants = self.serve_waiting() if self.waiting else []
        if call.closed or not call.reading or call in self.waiting:
            return grants
        if call.read_since_grant >= self.step or self._outstanding(call) <= 0:
            return self._top_up(call, grants)
        return grants

    def _pace(self, call: CallCredit, amount: int, now: float) -> None:
        """Measure the first round trip; grow the window when one was read in under two."""
        if not call.rtt:
            if call.first_grant_at < 0:
                return
            call.rtt = max(now - call.first_grant_at, 1e-6)
            call.window_started = now
        call.window_read += amount
        if call.window_read < call.window // 2:
            return
        # Half a window in under one round trip: the same pace, judged twice as often.
        if now - call.window_started < call.rtt and call.window < self.max_window:
            call.window = min(self.max_window, call.window * 2)
        call.window_started, call.window_read = now, 0

    def close(self, call: CallCredit) -> Grants:
        """The call ended: its inbox is gone, and so is all it held."""
        call.closed = True
        self.waiting.pop(call, None)
        self._release(call, call.held)
        return self.serve_waiting() if self.waiting else []

    def refund(self, call: CallCredit, amount: int) -> Grants:
        """A grant the shell could not send (the client's input had ended): back to the pool."""
        self._release(call, amount)
        return self.serve_waiting() if self.waiting else []

    def serve_waiting(self) -> Grants:
        """Grants for queued calls, in order, while credit is free."""
        grants: Grants = []
        for call in list(self.waiting):
            if self.agent.free <= self.reserve:
                break
            del self.waiting[call]
            self._top_up(call, grants)
        return grants

    def hold(self, want: int) -> int:
        """Up to ``want`` bytes for agent-side buffers (a monitor's output ring).

        Buffers may take only the upper half of the agent's budget, so clients'
        input always finds credit and never waits on a ring that does not shrink.
        """
        room = self.agent.free - self.agent_limit // 2
        granted = max(0, min(want, room))
        self.agent.held += granted
        return granted

    def unhold(self, amount: int) -> Grants:
        """A buffer gave ``amount`` bytes back: queued calls may have them."""
        self.agent.held -= amount
        return self.serve_waiting() if self.waiting else []

    # ---- bookkeeping --------------------------------------------------------------------

    def _outstanding(self, call: CallCredit) -> int:
        """Credit granted and not yet read back."""
        return call.held - self.reserve if call.held else 0

    def _top_up(self, call: CallCredit, grants: Grants) -> Grants:
        """Fill the call's window as far as both budgets allow; queue it if it has nothing."""
        outstanding = self._outstanding(call)
        reserve = 0 if call.held else self.reserve
        room = min(call.session.free, self.agent.free) - reserve
        # A quarter of what is free at most (a whole window while plenty is), so calls
        # that read a burst and then idle, holding their grant, never take it all.
        share = max(room // 4, self.window // 16)
        amount = max(0, min(call.window - outstanding, room, share))
        if amount == 0:
            if outstanding <= 0:
                self.waiting[call] = None
            return grants
        self._take(call, amount + reserve)
        call.read_since_grant = 0
        grants.append((call, amount))
        return grants

    def _take(self, call: CallCredit, amount: int) -> None:
        call.held += amount
        call.session.held += amount
        self.agent.held += amount

    def _release(self, call: CallCredit, amount: int) -> None:
        amount = min(amount, max(0, call.held - (self.reserve if not call.closed else 0)))
        call.held -= amount
        call.session.held -= amount
        self.agent.held -= amount
