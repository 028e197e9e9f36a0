"""Reading a ``ptydev.py counter`` board's output: which numbered lines came, and how.

Shared by the continuity tests and ``scripts/bench continuity``: the lines lost,
duplicated and out of order, how often the port was opened (a reopen is a reset
on many boards), and what the board received.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LINE = re.compile(rb"^(\d{8})$|^open (\d+)$|^rx:(.*)$")


@dataclass
class Tally:
    numbers: list[int]
    opens: int
    received: list[bytes]
    partial: int  # lines that match nothing (a torn line would show here)

    @property
    def duplicated(self) -> int:
        return len(self.numbers) - len(set(self.numbers))

    @property
    def reordered(self) -> int:
        return sum(1 for a, b in zip(self.numbers, self.numbers[1:], strict=False) if b < a)

    def lost_between(self, first: int, last: int) -> int:
        """Numbers in [first, last] that never arrived."""
        return len(set(range(first, last + 1)) - set(self.numbers))

    @property
    def lost(self) -> int:
        return self.lost_between(self.numbers[0], self.numbers[-1]) if self.numbers else 0


def tally(data: bytes) -> Tally:
    numbers: list[int] = []
    received: list[bytes] = []
    opens = partial = 0
    complete = data[: data.rfind(b"\n") + 1]
    for line in complete.split(b"\n")[:-1]:
        m = LINE.match(line)
        if m is None:
            partial += 1
        elif m.group(1) is not None:
            numbers.append(int(m.group(1)))
        elif m.group(2) is not None:
            opens += 1
        else:
            received.append(m.group(3))
    return Tally(numbers, opens, received, partial)
