"""What a farm run (`test`, `run -t upload` on a port glob) shows while it runs, and
how it stops on a signal.

- ``FarmProgress``: each board's state (flashing, running suite N of M, cases
  passed and failed so far, elapsed), as pure data and one plain line per board.
- ``live_view``: those lines redrawn in place with rich while the run lasts, on
  a terminal only (in a pipe the commands print a line as each board ends).
- ``stop_on_signals``: SIGINT and SIGTERM cancel the run instead of killing the
  process, so the command can still write its reports and its summary, then
  exit 128 + the signal's number as a shell would (130, 143).
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from pio_remote.cli.common import clean, console
from pio_remote.client.farm import Board
from pio_remote.client.reports import SuiteReport
from pio_remote.wire.unity import FAILED, PASSED

SIGNALS = (signal.SIGINT, signal.SIGTERM)
SIGNAL_NAMES = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}
REFRESH_PER_SECOND = 4
# What the agent's test.run events say a board is doing.
PHASES = {"upload": "flashing", "test": "running"}


@dataclass
class Stop:
    """Why a run was cut short: the signal, and when; None while it runs."""

    signum: int | None = None
    at: float = 0.0

    @property
    def stopped(self) -> bool:
        return self.signum is not None

    @property
    def reason(self) -> str:
        name = SIGNAL_NAMES.get(self.signum or 0, f"signal {self.signum}")
        return f"interrupted by {name}"

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)


@asynccontextmanager
async def stop_on_signals() -> AsyncIterator[Stop]:
    """Run the block; SIGINT or SIGTERM cancels it (once) and is recorded in the Stop.

    The block ends as if it had finished: the caller looks at ``stop.stopped``.
    A second signal while the cancelled tasks clean up (at most a few seconds:
    each call's CANCEL is bounded) is ignored.
    """
    stop = Stop()
    with trio.open_signal_receiver(*SIGNALS) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    stop.signum, stop.at = signum, time.monotonic()
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch)
            yield stop
            nursery.cancel_scope.cancel()


@dataclass
class BoardState:
    """One board's line."""

    name: str  # AGENT:PORT
    phase: str = "waiting"
    suite: int = 0  # 1-based index of the suite it runs, 0 before the first
    suites: int = 0
    suite_name: str = ""
    report: SuiteReport | None = None  # the suite in flight, with its cases so far
    since: float = field(default_factory=time.monotonic)
    until: float | None = None  # the clock stops while the board has nothing running
    done: bool = False

    def line(self, now: float) -> str:
        parts = [self.name, self.phase]
        if self.suites and self.suite:
            parts.append(f"suite {self.suite}/{self.suites} {self.suite_name}".rstrip())
        report = self.report  # read once: the run may end the suite meanwhile
        if report is not None:
            passed, failed = report.count(PASSED), report.count(FAILED)
            parts.append(f"{passed} passed, {failed} failed")
        end = now if self.until is None else self.until
        parts.append(f"{max(0.0, end - self.since):.0f}s")
        return clean("  ".join(parts))


class FarmProgress:
    """Every board of a run, in the order they were found."""

    def __init__(self, suites: int = 0) -> None:
        self.suites = suites
        self.boards: dict[tuple[str, str], BoardState] = {}

    def board(self, board: Board) -> BoardState:
        key = (board.label, board.port)
        if key not in self.boards:
            self.boards[key] = BoardState(f"{board.label}:{board.port}", suites=self.suites)
        return self.boards[key]

    # ---- test --------------------------------------------------------------------------

    def suite_started(self, board: Board, index: int, report: SuiteReport) -> None:
        state = self.board(board)
        state.suite, state.suite_name, state.report = index, f"{report.env}:{report.name}", report
        state.phase, state.since, state.until = "starting", time.monotonic(), None

    def test_event(self, board: Board, report: SuiteReport, event: dict[str, Any]) -> None:
        """An event of the agent's test.run (phase, waiting, case...)."""
        state = self.board(board)
        if "phase" in event:
            state.phase = PHASES.get(str(event["phase"]), str(event["phase"]))
        elif "waiting" in event:
            state.phase = "waiting for a lease"

    def suite_ended(self, board: Board, report: SuiteReport, last: bool) -> None:
        state = self.board(board)
        state.report = None
        state.phase = report.status if last else f"{report.status}, next suite"
        state.done, state.until = last, time.monotonic()

    def in_flight(self) -> list[SuiteReport]:
        """Suites started and not ended: what an interrupt cuts short."""
        return [s.report for s in self.boards.values() if s.report is not None]

    # ---- run -t upload -------------------------------------------------------------------

    def flashing(self, board: Board) -> None:
        state = self.board(board)
        state.phase, state.since, state.until = "flashing", time.monotonic(), None

    def flashed(self, board: Board, outcome: str) -> None:
        state = self.board(board)
        state.phase, state.done, state.until = outcome, True, time.monotonic()

    def unfinished(self) -> list[str]:
        return [s.name for s in self.boards.values() if not s.done]

    # ---- showing --------------------------------------------------------------------------

    def lines(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        # rich's refresh thread calls this while trio adds boards: list() copies the
        # values in one step under the GIL, where iterating the dict could see it grow.
        return [s.line(now) for s in list(self.boards.values())]


@contextmanager
def live_view(progress: FarmProgress, enabled: bool) -> Iterator[Callable[[str], None] | None]:
    """Redraw the boards' lines in place on stderr while the block runs (a terminal only).

    Yields a function that prints a line above the live lines (None when not
    live). What else the process prints to stdout or stderr goes above them too.
    """
    out = console(stderr=True)
    if not enabled or not out.is_terminal:
        yield None
        return
    from rich.live import Live
    from rich.text import Text

    def render() -> Text:
        return Text("\n".join(progress.lines()))

    with Live(
        get_renderable=render,
        console=out,
        refresh_per_second=REFRESH_PER_SECOND,
        transient=True,
        redirect_stdout=True,
        redirect_stderr=True,
    ) as live:

        def above(text: str) -> None:
            live.console.print(Text(clean(text)))

        yield above
