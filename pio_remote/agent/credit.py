"""The agent's end of a session, granting the client's input credit from its memory budget.

``BudgetedChannel`` is the shell around membudget.py: it asks the ``CreditBook``
when a call first reads, reads more, or ends, and sends the CREDIT messages the
book decides. A grant for a call of another session goes out from a task of
that session's link, so no call waits on another's send.
"""

from __future__ import annotations

import trio

from pio_remote.agent.membudget import CallCredit, CreditBook, Grants, Pool
from pio_remote.net.channel import Call, SecureChannel


class BudgetedChannel(SecureChannel):
    """A SecureChannel whose calls' input credit comes from a shared ``CreditBook``."""

    book: CreditBook
    credit_pool: Pool

    def open_budget(self, book: CreditBook) -> None:
        self.book = book
        self.credit_pool = book.open_session()

    def open_call_credit(self, call: Call) -> CallCredit:
        call.credit = self.book.open_call(self.credit_pool, call)
        return call.credit

    async def start_input(self, call: Call) -> None:
        await self.send_grants(call, self.book.start_reading(call.credit, trio.current_time()))

    async def input_consumed(self, call: Call, size: int) -> None:
        grants = self.book.consumed(call.credit, size, trio.current_time())
        if grants:
            await self.send_grants(call, grants)

    def end_input(self, call: Call) -> None:
        """The call ended: what it held goes to queued calls, of any session."""
        if call.credit is not None:
            self.send_grants_later(self.book.close(call.credit))

    async def send_grants(self, call: Call, grants: Grants) -> None:
        """CREDIT for this call now; grants for other calls go out from their own tasks."""
        others: Grants = []
        for credit, amount in grants:
            if credit.owner is call:
                message = self.session.grant(call.call_id, amount)
                if message is None:  # the client's input has ended: nothing to grant
                    others += self.book.refund(credit, amount)
                else:
                    await self.send_quietly(message)
            else:
                others.append((credit, amount))
        self.send_grants_later(others)

    def send_grants_later(self, grants: Grants) -> None:
        send_grants_later(self.book, grants)


def send_grants_later(book: CreditBook, grants: Grants) -> None:
    """Each grant from its own call's session, without waiting here."""
    while grants:
        credit, amount = grants.pop(0)
        target = credit.owner
        assert isinstance(target, Call) and isinstance(target.channel, BudgetedChannel)
        message = target.channel.session.grant(target.call_id, amount)
        if message is None:
            grants += book.refund(credit, amount)
        else:
            target.channel.spawn(target.channel.send_quietly, message)
