"""How `pio-remote test` shows results: rich tables on a terminal, plain lines in a pipe.

Names, messages and output come from boards and agents, so they are printed as
``rich.text.Text`` (never parsed as markup) and, in a pipe, with no control codes.
"""

from __future__ import annotations

from collections.abc import Callable

import click
from rich.table import Table
from rich.text import Text

from pio_remote.cli.common import console
from pio_remote.cli.lines import PrefixedLines
from pio_remote.client.farm import Board
from pio_remote.client.reports import RunReport, SuiteReport
from pio_remote.wire.unity import ERRORED, FAILED, PASSED, SKIPPED

STYLE = {PASSED: "green", FAILED: "red", SKIPPED: "yellow", ERRORED: "bold red"}


def _plain(text: str) -> str:
    """One line without control characters (a board can print anything)."""
    return "".join(ch if ch.isprintable() else " " for ch in text.replace("\n", " | "))


def suite_done_line(s: SuiteReport) -> str:
    """One line per finished suite; the board once (a farm's full_name names it too)."""
    counts = ", ".join(
        f"{s.count(st)} {st.lower()}" for st in (PASSED, FAILED, SKIPPED, ERRORED) if s.count(st)
    )
    return _plain(
        f"{s.env}:{s.name} on {s.agent}:{s.port}: {s.status} ({counts or 'no cases'}) "
        f"in {s.duration:.2f}s" + (f": {s.error}" if s.error else "")
    )


def total_line(r: RunReport) -> str:
    return (
        f"{r.boards} board(s), {len(r.suites)} suite(s), {r.cases} case(s): "
        f"{r.count(PASSED)} passed, {r.count(FAILED)} failed, {r.count(SKIPPED)} skipped, "
        f"{r.count(ERRORED)} errored in {r.duration:.2f}s"
    )


def print_report(r: RunReport) -> None:
    out = console()
    if not out.is_terminal:
        for s in r.suites:
            for c in s.cases:
                fields = [s.full_name, c.name, c.status, f"{c.duration:.3f}s"]
                fields += [c.message] if c.message else []
                click.echo("\t".join(map(_plain, fields)))  # tab-separated, for cut and awk
        click.echo(total_line(r))
        return
    boards: dict[tuple[str, str], list[SuiteReport]] = {}
    for s in r.suites:
        boards.setdefault((s.agent, s.port), []).append(s)
    for (agent, port), suites in boards.items():
        table = Table(
            "Suite", "Case", "Status", "Duration", "Message", title=Text(f"{agent}:{port}")
        )
        for s in suites:
            for c in s.cases:
                table.add_row(
                    Text(f"{s.env}:{s.name}"),
                    Text(c.name),
                    Text(c.status, style=STYLE.get(c.status, "")),
                    f"{c.duration:.3f}s",
                    Text(c.message),
                )
        out.print(table)
    ok = r.ok
    out.print(Text(total_line(r), style="green" if ok else "bold red"))


class LineOutput:
    """Raw board output for -v: whole lines, each prefixed with its board on a farm."""

    def __init__(self, farm: bool):
        self.farm = farm
        self.boards: dict[Board, PrefixedLines] = {}

    def __call__(self, board: Board, data: bytes) -> None:
        if board not in self.boards:
            prefix = f"[{board.label}:{board.port}] " if self.farm else ""
            self.boards[board] = PrefixedLines(prefix, whole_lines=True)
        self.boards[board](data)

    def raw(self, label: str, data: bytes) -> None:
        """Output that belongs to an agent, not a board (a build there)."""
        self(Board(label, label, "build"), data)

    def flush(self) -> None:
        for lines in self.boards.values():
            lines.close()


def stderr_sayer(quiet: bool) -> Callable[[str], None]:
    def say(text: str) -> None:
        if not quiet:
            console(stderr=True).print(text, markup=False, highlight=False)

    return say
