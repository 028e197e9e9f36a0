"""What a running agent holds (``AgentState``) and its end of one client session
(``AgentChannel``).

Handlers read both through their ``CallContext``; service.py makes them. Kept apart
from the service so that a handler can name them without importing the process
that runs it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from pio_remote import home
from pio_remote.agent.config import AgentConfig
from pio_remote.agent.credit import BudgetedChannel
from pio_remote.agent.jobs.inflight import PutsInFlight
from pio_remote.agent.membudget import CreditBook
from pio_remote.agent.pending import Pending
from pio_remote.agent.serial.portlock import Caller, PortRegistry
from pio_remote.net.channel import Call
from pio_remote.wire import e2e, session

# A call's first grant of client input: 2 MiB covers 300 ms at 50 Mbit/s, so an
# upload over a long path does not stall for a round trip before its window
# grows (membudget.py); the session budget still bounds it (a quarter of what
# is free while contended).
INPUT_WINDOW = 2 * session.INITIAL_WINDOW


@dataclass
class AgentState:
    name: str
    home: Path
    identity: home.Identity
    config: AgentConfig
    shares: list[str] = field(default_factory=list)
    working_dir: Path | None = None
    agent_id: str = ""
    sessions: int = 0
    ports: PortRegistry = field(default_factory=PortRegistry)
    # Client input held in memory, per session and in all (membudget.py); from config.
    credit: CreditBook | None = None
    # The disk budget of the working directory (disk.py), made at the first use.
    disk: Any = None
    pending: Pending = field(init=False)  # channels waiting for a handshake
    # The SHA-256 of the last image flashed on each port (by key), for flash skipping.
    flashed: dict[str, str] = field(default_factory=dict)
    # Monitored ports by registry key (serial/stream.py), and the nursery they live in:
    # the agent's own, so a port outlives the session that opened it.
    streams: dict[str, Any] = field(default_factory=dict)
    keeper: trio.Nursery | None = None

    def credit_book(self) -> CreditBook:
        if self.credit is None:
            self.credit = CreditBook(
                agent_limit=self.config.agent_memory_bytes,
                session_limit=self.config.session_memory_bytes,
                window=INPUT_WINDOW,
                reserve=session.MAX_JSON_BODY,
                step=session.CREDIT_STEP,
                max_window=session.MAX_WINDOW,
            )
        return self.credit

    def __post_init__(self) -> None:
        self.pending = Pending(self.config)


# Runs one call to its RESULT (service.run_call): passed in, so the channel does not
# import the service that makes it.
CallRunner = Callable[["AgentChannel", Call], Awaitable[None]]


class AgentChannel(BudgetedChannel):
    def __init__(
        self,
        agent: AgentState,
        client_key: bytes,
        client_account: str,
        pairing_invite: bytes | None,
        *args: Any,
        run_call: CallRunner,
    ):
        super().__init__(*args)
        self.agent = agent
        self.client_key = client_key
        self.client_account = client_account
        self.pairing_invite = pairing_invite
        self.run_call = run_call
        # allowlist.OWNER or CLIENT from the agent's own allow-list (handshake.Accept);
        # client_account is the relay's word, shown to others but never a decision.
        self.role: str | None = None
        self.nursery: trio.Nursery | None = None
        # Lease ids this session named (lease.use): its calls may use those ports.
        self.caller = Caller(e2e.fingerprint(client_key))
        self.puts = PutsInFlight()  # a flash sent behind its puts waits for them
        self.put_keys: dict[int, str] = {}  # call id -> SHA-256 of a running put
        self.open_budget(agent.credit_book())

    @property
    def holder(self) -> str:
        """How other clients see this session when it holds a port."""
        return f"{self.client_account} (client key {e2e.fingerprint(self.client_key)[:9]})"

    def handle_other(self, event: session.SessionEvent) -> None:
        match event:
            case session.CallStarted(call_id=call_id, method=method, params=params):
                call = Call(self, call_id, method, params)
                if (key := self.puts.started(method, params)) is not None:
                    self.put_keys[call_id] = key
                self.open_call_credit(call)
                self.calls[call_id] = call
                assert self.nursery is not None
                self.nursery.start_soon(self.run_call, self, call)
            case session.CancelRequested(call_id=call_id):
                call = self.calls.get(call_id)
                if call is not None and call.cancel_scope is not None:
                    call.cancel_requested = True
                    call.cancel_scope.cancel()
