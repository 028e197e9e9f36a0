"""Unity test output as events: bytes from a board's serial port in, results out.

No I/O and no clock, in the manner of h11: the agent feeds whatever a read gave
(``receive_data``), takes events out (``next_event`` until ``NEED_DATA``) and
says when the output ended (``receive_eof``: a timeout, or the port went away).

What Unity prints (unity.c, and PlatformIO's unity runner which reads it):

    <boot noise, banners, anything>
    test/test_main.c:12:test_add:PASS
    test/test_main.c:18:test_sub:FAIL: Expected 1 Was 2
    test/test_main.c:24:test_skip:IGNORE: not on this board
    test/test_main.c:30:test_other:IGNORE
    -----------------------
    4 Tests 1 Failures 2 Ignored
    FAIL                                  (or OK)

Robustness rules, each covered by tests/unit/test_unity.py:

- a line ends at ``\\n``, ``\\r\\n`` or a lone ``\\r``; a line may arrive in any
  number of pieces; empty lines are skipped, so the cut points never matter;
- NUL bytes and ANSI escape sequences are removed, undecodable bytes replaced;
- the status is the first ``:PASS``/``:FAIL``/``:IGNORE`` that ends the line or
  is followed by ``:``, so a test name may contain ``::`` and a message colons;
- a board that resets mid-run (the banner it printed before its first test
  comes again, or a test it already reported runs again) yields ``Restarted``
  and the count starts over;
- output that ends without a summary yields ``Incomplete``: an errored suite,
  never a pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# Longest line kept. Unity's own messages are short (UNITY_OUTPUT_CHAR one
# character at a time, messages of a few dozen bytes); a board spewing binary
# without newlines must not grow the agent's memory, so past this the rest of
# the line is dropped. 16 KiB is also h11's default header buffer.
MAX_LINE_BYTES: Final = 16 * 1024

PASSED: Final = "PASSED"
FAILED: Final = "FAILED"
SKIPPED: Final = "SKIPPED"
ERRORED: Final = "ERRORED"
_STATUS = {"PASS": PASSED, "FAIL": FAILED, "IGNORE": SKIPPED}

_ANSI = re.compile(rb"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|[@-Z\\-_])")
_CASE = re.compile(
    r"^(?P<file>.+?):(?P<line>\d+):(?P<name>.+?):(?P<status>PASS|FAIL|IGNORE)"
    r"(?::(?P<message>.*))?$"
)
_COUNTS = re.compile(r"(\d+) Tests (\d+) Failures (\d+) Ignored")
_VERDICT = re.compile(r"^(OK|FAIL)\b")


@dataclass(frozen=True)
class Output:
    """A line that is not a test result: boot noise, banners, prints from tests."""

    text: str


@dataclass(frozen=True)
class CaseResult:
    """One test case as Unity reported it; ``status`` is PASSED, FAILED or SKIPPED."""

    file: str
    line: int
    name: str
    status: str
    message: str


@dataclass(frozen=True)
class Summary:
    """Unity's closing counts and verdict: the suite ran to the end."""

    tests: int
    failures: int
    ignored: int
    ok: bool


@dataclass(frozen=True)
class Restarted:
    """The board reset mid-run; results before this belong to an aborted run."""

    reason: str


@dataclass(frozen=True)
class Incomplete:
    """The output ended before a summary: the suite errored (hang, crash, unplugged)."""

    cases: int


Event = Output | CaseResult | Summary | Restarted | Incomplete


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


class UnityParser:
    """One suite's output on one board. ``done`` once a Summary or Incomplete came out."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._dropping = False  # inside an over-long line: skip to its end
        self._events: list[Event] = []
        self._banner: str | None = None
        self._seen: set[tuple[str, int, str]] = set()
        self._counts: tuple[int, int, int] | None = None
        self._eof = False
        self.done = False

    # ---- input ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self._eof:
            raise RuntimeError("receive_data after receive_eof")
        start = 0
        for m in re.finditer(rb"[\r\n]", data):
            self._append(data[start : m.start()])
            self._end_line()
            start = m.end()
        self._append(data[start:])

    def receive_eof(self) -> None:
        """No more output (timeout, port gone): a partial line counts, then it ends."""
        if self._eof:
            return
        self._end_line()
        self._eof = True
        if self._counts is not None:
            self._finish_summary(None)
        if not self.done:
            self.done = True
            self._events.append(Incomplete(len(self._seen)))

    def next_event(self) -> Event | _NeedData:
        if self._events:
            return self._events.pop(0)
        return NEED_DATA

    def events(self) -> list[Event]:
        """Every event available now."""
        out, self._events = self._events, []
        return out

    # ---- lines ----------------------------------------------------------------------

    def _append(self, piece: bytes) -> None:
        piece = piece.replace(b"\0", b"")  # before the limit, so cut points never matter
        if self._dropping or not piece:
            return
        room = MAX_LINE_BYTES - len(self._buf)
        if len(piece) > room:
            self._buf += piece[:room]
            self._dropping = True
            return
        self._buf += piece

    def _end_line(self) -> None:
        raw = bytes(self._buf)
        self._buf.clear()
        self._dropping = False
        text = _clean(raw)
        if text:
            self._line(text)

    def _line(self, text: str) -> None:
        if self.done:
            self._events.append(Output(text))
            return
        if self._counts is not None:
            verdict = _VERDICT.match(text)
            self._finish_summary(verdict.group(1) == "OK" if verdict else None)
            if verdict:
                return
            self._events.append(Output(text))
            return
        case = _CASE.match(text)
        if case is not None:
            self._case(case)
            return
        counts = _COUNTS.search(text)
        if counts is not None:
            self._counts = (int(counts[1]), int(counts[2]), int(counts[3]))
            return
        if not self._seen:
            self._banner = self._banner or text
        elif text == self._banner:
            self._restart(f"the board printed its banner again: {text}")
        self._events.append(Output(text))

    def _case(self, m: re.Match[str]) -> None:
        key = (m["file"], int(m["line"]), m["name"])
        if key in self._seen:
            self._restart(f"test {m['name']} ran again")
        self._seen.add(key)
        message = (m["message"] or "").strip()
        self._events.append(CaseResult(key[0], key[1], key[2], _STATUS[m["status"]], message))

    def _restart(self, reason: str) -> None:
        self._seen.clear()
        self._events.append(Restarted(reason))

    def _finish_summary(self, ok: bool | None) -> None:
        assert self._counts is not None
        tests, failures, ignored = self._counts
        self._counts = None
        self.done = True
        self._events.append(Summary(tests, failures, ignored, failures == 0 if ok is None else ok))


def _clean(raw: bytes) -> str:
    raw = _ANSI.sub(b"", raw)
    return raw.decode("utf-8", errors="replace").strip()


def parse(data: bytes, *, eof: bool = True) -> list[Event]:
    """All events of a complete output, for tests and one-shot use."""
    parser = UnityParser()
    parser.receive_data(data)
    if eof:
        parser.receive_eof()
    return parser.events()
