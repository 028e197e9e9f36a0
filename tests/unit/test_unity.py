"""The Unity parser, with no board and no trio: bytes in, events out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pio_remote.wire import unity
from pio_remote.wire.unity import (
    FAILED,
    NEED_DATA,
    PASSED,
    SKIPPED,
    CaseResult,
    Incomplete,
    Output,
    Restarted,
    Summary,
    UnityParser,
    parse,
)

# What the committed vboard firmware prints (unity-fail.elf), boot noise first.
BOARD_OUTPUT = (
    b"\x00\x00\xff boot rom v3\r\n"
    b"pio-remote vboard firmware v1\r\n"
    b"test/test_main.c:12:test_add:PASS\r\n"
    b"test/test_main.c:18:test_sub:FAIL: Expected 1 Was 2\r\n"
    b"test/test_main.c:24:test_skip:IGNORE: not on this board\r\n"
    b"-----------------------\r\n"
    b"3 Tests 1 Failures 1 Ignored\r\n"
    b"FAIL\r\n"
    b"echoed input after the report\r\n"
)


def cases(events: list[unity.Event]) -> list[CaseResult]:
    return [e for e in events if isinstance(e, CaseResult)]


def test_board_output_gives_cases_then_summary():
    events = parse(BOARD_OUTPUT)
    assert cases(events) == [
        CaseResult("test/test_main.c", 12, "test_add", PASSED, ""),
        CaseResult("test/test_main.c", 18, "test_sub", FAILED, "Expected 1 Was 2"),
        CaseResult("test/test_main.c", 24, "test_skip", SKIPPED, "not on this board"),
    ]
    summaries = [e for e in events if isinstance(e, Summary)]
    assert summaries == [Summary(3, 1, 1, ok=False)]
    # Noise before the first test and the board's echo after the summary are output.
    outputs = [e.text for e in events if isinstance(e, Output)]
    assert outputs[0] == "\ufffd boot rom v3"
    assert outputs[-1] == "echoed input after the report"
    assert not any(isinstance(e, Incomplete) for e in events)


def test_next_event_says_need_data_until_a_line_is_complete():
    p = UnityParser()
    p.receive_data(b"test/a.c:1:test_x:PA")
    assert p.next_event() is NEED_DATA
    p.receive_data(b"SS\n")
    assert p.next_event() == CaseResult("test/a.c", 1, "test_x", PASSED, "")
    assert p.next_event() is NEED_DATA
    assert not p.done


def test_line_endings_crlf_lone_cr_and_lf():
    events = parse(
        b"a.c:1:t1:PASS\ra.c:2:t2:PASS\r\na.c:3:t3:PASS\n2 Tests 0 Failures 0 Ignored\rOK"
    )
    assert [c.name for c in cases(events)] == ["t1", "t2", "t3"]
    assert events[-1] == Summary(2, 0, 0, ok=True)


def test_nul_bytes_and_ansi_colour_are_removed():
    raw = (
        b"\x1b[32mtest/a.c:5:test_\x00ok:PASS\x1b[0m\r\n"
        b"\x1b[1;31m1 Tests 0 Failures 0 Ignored\r\nOK\n"
    )
    events = parse(raw)
    assert cases(events) == [CaseResult("test/a.c", 5, "test_ok", PASSED, "")]
    assert events[-1] == Summary(1, 0, 0, ok=True)


def test_ignore_with_and_without_message_and_fail_message_with_colons():
    events = parse(
        b"t.c:1:a:IGNORE\n"
        b"t.c:2:b:IGNORE: later\n"
        b"t.c:3:c:FAIL: Expected 'x:y' Was 'z:w': at step 2\n"
        b"t.c:4:d:FAIL\n"
    )
    assert [(c.status, c.message) for c in cases(events)] == [
        (SKIPPED, ""),
        (SKIPPED, "later"),
        (FAILED, "Expected 'x:y' Was 'z:w': at step 2"),
        (FAILED, ""),
    ]


def test_names_with_double_colons_and_paths_with_drive_letters():
    events = parse(
        b"C:\\proj\\test\\t.cpp:40:Suite::test_thing:PASS\n"
        b"test/t.cpp:41:ns::PASS_like::name:FAIL: no: really\n"
    )
    assert cases(events) == [
        CaseResult("C:\\proj\\test\\t.cpp", 40, "Suite::test_thing", PASSED, ""),
        CaseResult("test/t.cpp", 41, "ns::PASS_like::name", FAILED, "no: really"),
    ]


def test_no_summary_is_incomplete_never_a_pass():
    p = UnityParser()
    p.receive_data(b"banner\r\ntest/a.c:1:test_a:PASS\r\ntest/a.c:2:test_b:PASS")
    assert not p.done
    p.receive_eof()
    events = p.events()
    # The partial last line still counts; then the suite is incomplete.
    assert cases(events)[-1].name == "test_b"
    assert events[-1] == Incomplete(cases=2)
    assert p.done
    assert parse(b"") == [Incomplete(0)]


def test_summary_without_verdict_line_uses_the_counts():
    assert parse(b"1 Tests 1 Failures 0 Ignored")[-1] == Summary(1, 1, 0, ok=False)
    assert parse(b"1 Tests 0 Failures 0 Ignored\nnoise\n")[-2:] == [
        Summary(1, 0, 0, ok=True),
        Output("noise"),
    ]


def test_board_reset_mid_run_restarts_the_count():
    events = parse(
        b"firmware v1\r\nt.c:1:a:PASS\r\nt.c:2:b:PA"  # reset in the middle of a line
        b"\r\nfirmware v1\r\nt.c:1:a:PASS\r\nt.c:2:b:PASS\r\n2 Tests 0 Failures 0 Ignored\r\nOK\r\n"
    )
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "Output",
        "CaseResult",
        "Output",  # "t.c:2:b:PA": not a result line
        "Restarted",
        "Output",
        "CaseResult",
        "CaseResult",
        "Summary",
    ]
    # A test that runs again, without a banner, is a reset too.
    again = parse(b"t.c:1:a:PASS\nt.c:1:a:PASS\n1 Tests 0 Failures 0 Ignored\nOK\n")
    assert [type(e) for e in again] == [CaseResult, Restarted, CaseResult, Summary]


def test_overlong_line_is_cut_and_the_next_line_parses():
    p = UnityParser()
    p.receive_data(b"x" * (unity.MAX_LINE_BYTES * 3))
    assert len(p._buf) == unity.MAX_LINE_BYTES  # bounded while the line goes on
    p.receive_data(b"\nt.c:1:a:PASS\n")
    events = p.events()
    assert events[0] == Output("x" * unity.MAX_LINE_BYTES)
    assert cases(events) == [CaseResult("t.c", 1, "a", PASSED, "")]


def test_receive_data_after_eof_is_our_error():
    p = UnityParser()
    p.receive_eof()
    with pytest.raises(RuntimeError, match="receive_data after receive_eof"):
        p.receive_data(b"x")


# ---- properties -------------------------------------------------------------------------

noise = st.binary(max_size=40).filter(lambda b: b":PASS" not in b and b"Tests" not in b)
name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}(::[A-Za-z_][A-Za-z0-9_]{0,8})?", fullmatch=True)
message = st.from_regex(r"[ -~]{0,30}", fullmatch=True)
ending = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def outputs(draw: st.DrawFn) -> bytes:
    """A plausible board output: noise, case lines, maybe a summary, with random endings."""
    parts = [draw(noise) + draw(ending)]
    for i in range(draw(st.integers(0, 6))):
        status = draw(st.sampled_from(["PASS", "FAIL", "IGNORE"]))
        line = f"test/t.c:{i + 1}:{draw(name)}_{i}:{status}"
        if status != "PASS" and draw(st.booleans()):
            line += ":" + draw(message)
        parts.append(line.encode() + draw(ending))
    if draw(st.booleans()):
        parts.append(b"3 Tests 1 Failures 0 Ignored" + draw(ending) + b"FAIL" + draw(ending))
    parts.append(draw(st.binary(max_size=20)))
    return b"".join(parts)


def feed(pieces: list[bytes]) -> list[unity.Event]:
    p = UnityParser()
    out: list[unity.Event] = []
    for piece in pieces:
        p.receive_data(piece)
        while (event := p.next_event()) is not NEED_DATA:
            out.append(event)
    p.receive_eof()
    return out + p.events()


@settings(max_examples=150, deadline=None)
@given(outputs())
def test_same_events_whatever_the_cut_point(data):
    whole = feed([data])
    for cut in range(len(data) + 1):
        assert feed([data[:cut], data[cut:]]) == whole, f"cut at {cut}"


@settings(max_examples=150, deadline=None)
@given(outputs(), st.lists(st.integers(0, 400), max_size=12))
def test_same_events_whatever_the_pieces(data, cuts):
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert feed(pieces) == feed([data])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_end_in_exactly_one_verdict(data):
    events = feed([data])
    ends = [e for e in events if isinstance(e, Summary | Incomplete)]
    assert len(ends) == 1
    # Without a summary line there is no pass.
    if b"Tests" not in data:
        assert isinstance(ends[0], Incomplete)
