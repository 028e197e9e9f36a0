import io
import re
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pio_remote.client.monitor.filters import (
    CR,
    CRLF,
    FILTERS,
    LF,
    Codec,
    Colorize,
    FilterChain,
    FilterContext,
    Hexlify,
    LogToFile,
    NoControls,
    NoTerminal,
    Printable,
    SendOnEnter,
    Timestamp,
    Transform,
    available_filters,
    build_chain,
    next_eol,
    normalize_eol,
)

FIXED = datetime(2024, 5, 6, 7, 8, 9, 123456)
STAMP = "07:08:09.123 > "


def fixed_clock() -> datetime:
    return FIXED


def split_at(data, cuts):
    """Split a str/bytes at the given (unsorted, possibly duplicate) positions."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


cuts_st = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


# -- registry --------------------------------------------------------------------


def test_registry_has_platformio_filters():
    expected = {
        "default", "direct", "nocontrol", "printable", "colorize", "debug",
        "time", "send_on_enter", "hexlify", "log2file",
    }  # fmt: skip
    assert expected <= set(FILTERS)
    assert available_filters() == sorted(FILTERS)


def test_unknown_filter_names_it_and_lists_available():
    with pytest.raises(ValueError) as exc:
        build_chain(["time", "bogus"], "CRLF")
    message = str(exc.value)
    assert "'bogus'" in message
    for name in available_filters():
        assert name in message


def test_unknown_filter_rejected_even_in_raw_mode():
    with pytest.raises(ValueError, match="bogus"):
        build_chain(["bogus"], "LF", raw=True)


def test_raw_mode_returns_no_chain():
    assert build_chain(["time", "colorize"], "CRLF", raw=True) is None


def test_empty_filter_list_means_default():
    chain = build_chain([], "LF")
    assert chain.names == ["default"]
    assert chain.rx("\x1b[31mred") == "\u241b[31mred"


def test_names_accept_commas_and_case():
    chain = build_chain(["Time, colorize", " direct "], "LF")
    assert chain.names == ["time", "colorize", "direct"]


def test_unknown_eol_rejected():
    with pytest.raises(ValueError, match="EOL"):
        build_chain([], "CRCR")


def test_eol_names_and_cycle():
    assert normalize_eol(" crlf ") == "CRLF"
    assert next_eol("CRLF") == "CR"
    assert next_eol("cr") == "LF"
    assert next_eol("LF") == "CRLF"


# -- EOL ---------------------------------------------------------------------------


def test_crlf_tx_and_rx():
    t = CRLF()
    assert t.tx("ab\n") == "ab\r\n"
    assert t.rx("one\r\ntwo\r\n") == "one\ntwo\n"


def test_crlf_rx_joins_pair_split_across_chunks():
    t = CRLF()
    assert t.rx("line\r") == "line"
    assert t.rx("\nnext") == "\nnext"


def test_crlf_lone_cr_survives_and_flushes():
    t = CRLF()
    assert t.rx("50%\r") == "50%"
    assert t.rx("60%") == "\r60%"
    assert t.rx("done\r") == "done"
    assert t.flush_rx() == "\r"
    assert t.flush_rx() == ""


def test_cr_and_lf():
    assert CR().tx("a\nb\n") == "a\rb\r"
    assert CR().rx("a\rb\r") == "a\nb\n"
    assert LF().tx("a\n") == "a\n"
    assert LF().rx("a\r\n") == "a\r\n"


@given(st.text(alphabet=st.characters(exclude_characters="\r")), cuts_st)
def test_crlf_round_trip_over_any_chunking(text, cuts):
    tx, rx = CRLF(), CRLF()
    wire = tx.tx(text)
    assert "\n" not in wire.replace("\r\n", "")
    received = "".join(rx.rx(piece) for piece in split_at(wire, cuts)) + rx.flush_rx()
    assert received == text


@given(st.text(), cuts_st)
def test_crlf_rx_chunking_does_not_matter(text, cuts):
    whole = CRLF()
    expected = whole.rx(text) + whole.flush_rx()
    t = CRLF()
    assert "".join(t.rx(p) for p in split_at(text, cuts)) + t.flush_rx() == expected


@given(st.text(alphabet=st.characters(exclude_characters="\r")))
def test_cr_round_trip(text):
    assert CR().rx(CR().tx(text)) == text


# -- simple filters ----------------------------------------------------------------


@given(st.text())
def test_direct_is_identity(text):
    t = FILTERS["direct"]()
    assert t.rx(text) == text
    assert t.tx(text) == text
    assert t.echo(text) == text


def test_default_replaces_terminal_controls_but_keeps_layout():
    t = NoTerminal()
    assert t.rx("a\x1b[2Jb\x07") == "a\u241b[2Jb\u2407"
    assert t.rx("x\r\n\b\ty") == "x\r\n\b\ty"
    assert t.rx("\x7f\x9b") == "\u2421\u2425"
    assert t.echo("\x1b") == "\u241b"
    assert t.tx("\x1b") == "\x1b"


@given(st.text())
def test_default_leaves_only_layout_controls(text):
    out = NoTerminal().rx(text)
    assert all(ch in "\r\n\b\t" or ord(ch) >= 32 for ch in out)
    assert len(out) == len(text)
    assert "\x7f" not in out and "\x9b" not in out


def test_nocontrol_shows_everything():
    t = NoControls()
    assert t.rx("a b\r\n") == "a\u2423b\u240d\u240a"
    assert t.rx("\x00\x1b\x7f") == "\u2400\u241b\u2421"
    assert t.echo("\t") == "\u2409"


@given(st.text())
def test_nocontrol_output_has_no_controls_or_spaces(text):
    out = NoControls().rx(text)
    assert all(ord(ch) > 32 and ch not in "\x7f\x9b" for ch in out)


def test_printable():
    t = Printable()
    assert t.rx("ok\r\n\t\b") == "ok\r\n\t\b"
    assert t.rx("\x01") == "\u2401"
    assert t.rx("\xe9") == "\u2082\u2083\u2083 "  # 233 in subscript digits
    assert t.rx("\x7f") == "\u2081\u2082\u2087 "
    assert t.echo("\x02") == "\u2402"


@given(st.text())
def test_printable_output_is_ascii_or_symbols(text):
    out = Printable().rx(text)
    for ch in out:
        assert (
            " " <= ch < "\x7f"
            or ch in "\r\n\b\t"
            or 0x2080 <= ord(ch) <= 0x2089
            or (0x2400 <= ord(ch) < 0x2420)
        )


def test_colorize():
    t = Colorize()
    assert t.rx("hi") == "\x1b[37mhi"
    assert t.echo("k") == "\x1b[31mk"
    assert t.tx("k") == "k"


def test_debug_reports_as_notes_and_passes_text():
    chain = build_chain(["debug"], "LF")
    assert chain.rx("a\n") == "a\n"
    assert chain.tx("x") == "x"
    assert chain.take_notes() == [" [RX:'a\\n'] ", " [TX:'x'] "]
    assert chain.take_notes() == []


# -- time -------------------------------------------------------------------------


def test_time_prefixes_each_line():
    t = Timestamp(FilterContext(clock=fixed_clock))
    assert t.rx("one\ntwo\n") == f"{STAMP}one\n{STAMP}two\n"
    assert t.rx("par") == f"{STAMP}par"
    assert t.rx("tial\n") == "tial\n"
    assert t.rx("\n") == f"{STAMP}\n"


def test_time_stamps_line_when_its_first_char_arrives():
    times = iter([datetime(2024, 1, 1, 10, 0, 0, 1000), datetime(2024, 1, 1, 10, 0, 5, 250000)])
    t = Timestamp(FilterContext(clock=lambda: next(times)))
    assert t.rx("a\n") == "10:00:00.001 > a\n"
    assert t.rx("b\n") == "10:00:05.250 > b\n"


def test_time_does_not_read_clock_mid_line():
    def boom() -> datetime:
        raise AssertionError("clock read")

    t = Timestamp(FilterContext(clock=fixed_clock))
    t.rx("start")
    t.ctx = FilterContext(clock=boom)
    assert t.rx(" more") == " more"


@given(st.text(alphabet="ab\r\n"), cuts_st)
def test_time_prefixes_only_line_starts_over_any_chunking(text, cuts):
    t = Timestamp(FilterContext(clock=fixed_clock))
    out = "".join(t.rx(piece) for piece in split_at(text, cuts))
    assert out.replace(STAMP, "") == text
    lines = out.split("\n")
    for line in lines[:-1]:
        assert line.startswith(STAMP)
        assert STAMP not in line[len(STAMP) :]
    assert lines[-1] == "" or (lines[-1].startswith(STAMP) and lines[-1].count(STAMP) == 1)


# -- send_on_enter -----------------------------------------------------------------


@pytest.mark.parametrize(("eol", "wire"), [("CRLF", "ab\r\n"), ("CR", "ab\r"), ("LF", "ab\n")])
def test_send_on_enter_sends_whole_line(eol, wire):
    chain = build_chain(["send_on_enter"], eol)
    assert [chain.tx(c) for c in "ab\n"] == ["", "", wire]
    assert chain.wants_echo


def test_send_on_enter_backspace_edits_line_and_echo():
    chain = build_chain(["send_on_enter"], "CRLF")
    out, echoed = [], []
    for key in "abx\b\bc\b\b\b\n":
        out.append(chain.tx(key))
        echoed.append(chain.echo(key))
    assert "".join(out) == "\r\n"
    assert "".join(echoed) == "abx\b \b\b \bc\b \b\b \b\n"

    for key in "ok\bK\n":
        sent = chain.tx(key)
    assert sent == "oK\r\n"


def test_send_on_enter_paste_sends_complete_lines_only():
    t = SendOnEnter(FilterContext(eol="CRLF"))
    assert t.tx("one\r\ntwo\r\nthr") == "one\r\ntwo\r\n"
    assert t.pending == "thr"
    assert t.tx("ee\r\n") == "three\r\n"


def test_other_filters_do_not_force_echo():
    assert not build_chain(["time", "colorize"], "CRLF").wants_echo


# -- hexlify ----------------------------------------------------------------------


def test_hexlify_layout():
    t = Hexlify()
    out = t.rx("".join(chr(i) for i in range(17)))
    assert out == ("\n0000 | 00 01 02 03 04 05 06 07 08 09 0A 0B 0C 0D 0E 0F \n0010 | 10 ")
    assert t.rx("\xff") == "FF "
    assert t.rx("\u20ac") == "?? "
    assert t.tx("A\n") == "A\n"


def parse_hexdump(dump: str) -> bytes:
    body = re.sub(r"\n[0-9A-F]{4} \| ", "", dump)
    return bytes(int(tok, 16) for tok in body.split())


@given(st.binary(), cuts_st)
def test_hexlify_dump_parses_back_to_bytes(data, cuts):
    chain = build_chain(["hexlify"], "CRLF", encoding="utf-8")
    dump = "".join(chain.decode_rx(p) for p in split_at(data, cuts)) + chain.flush_rx()
    assert parse_hexdump(dump) == data
    offsets = re.findall(r"\n([0-9A-F]{4}) \| ", dump)
    assert [int(o, 16) for o in offsets] == list(range(0, len(data), 16))


# -- log2file ---------------------------------------------------------------------


def test_log2file_writes_to_injected_file_and_leaves_it_open():
    log = io.StringIO()
    chain = build_chain(["log2file"], "LF", log_file=log)
    chain.start()
    assert chain.rx("hello\n") == "hello\n"
    chain.rx("world")
    assert log.getvalue() == "hello\nworld"
    chain.close()
    assert not log.closed
    chain.rx("late")  # after close: passed through, not logged, no new file
    assert log.getvalue() == "hello\nworld"


def test_log2file_names_file_like_platformio(tmp_path: Path):
    opened: dict[Path, io.StringIO] = {}

    def opener(path: Path) -> io.StringIO:
        opened[path] = io.StringIO()
        return opened[path]

    chain = build_chain(["log2file"], "LF", clock=fixed_clock, log_dir=tmp_path, log_opener=opener)
    chain.start()
    expected = tmp_path / "platformio-device-monitor-240506-070809.log"
    assert list(opened) == [expected]
    assert chain.take_notes() == [f"--- Logging an output to {expected}\n"]
    chain.rx("data")
    assert opened[expected].getvalue() == "data"
    chain.close()
    assert opened[expected].closed


def test_log2file_real_file_opens_lazily(tmp_path: Path):
    t = LogToFile(FilterContext(clock=fixed_clock, log_dir=tmp_path))
    assert list(tmp_path.iterdir()) == []
    t.rx("x\r\ny")
    t.close()
    (path,) = tmp_path.iterdir()
    assert path.read_bytes() == b"x\r\ny"


def test_log_sees_rx_filters_in_platformio_order():
    # PlatformIO runs rx filters in the order given: time first, then log2file.
    log = io.StringIO()
    chain = build_chain(["time", "log2file"], "CRLF", clock=fixed_clock, log_file=log)
    assert chain.rx("a\r\n") == f"{STAMP}a\n"
    assert log.getvalue() == f"{STAMP}a\r\n"

    log = io.StringIO()
    chain = build_chain(["log2file", "time"], "CRLF", clock=fixed_clock, log_file=log)
    chain.rx("a\r\n")
    assert log.getvalue() == "a\r\n"


# -- chain ordering and bytes --------------------------------------------------------


def test_tx_runs_eol_first_then_filters_in_reverse():
    # send_on_enter listed last runs before debug on tx, so debug sees whole lines.
    chain = build_chain(["debug", "send_on_enter"], "CRLF")
    for key in "hi\n":
        chain.tx(key)
    assert chain.take_notes() == [" [TX:''] ", " [TX:''] ", " [TX:'hi\\r\\n'] "]

    chain = build_chain(["send_on_enter", "debug"], "CRLF")
    for key in "hi\n":
        chain.tx(key)
    assert chain.take_notes() == [" [TX:'h'] ", " [TX:'i'] ", " [TX:'\\r\\n'] "]


def test_echo_uses_original_key_and_filters():
    chain = build_chain(["colorize"], "CRLF")
    assert chain.echo("\n") == "\x1b[31m\n"
    assert chain.tx("\n") == "\r\n"


def test_decode_rx_keeps_split_utf8_and_collapses_crlf():
    chain = build_chain(["direct"], "CRLF")
    data = "é€\r\n".encode()
    assert chain.decode_rx(data[:1]) == ""
    assert chain.decode_rx(data[1:4]) == "é"
    assert chain.decode_rx(data[4:6]) == "€"
    assert chain.decode_rx(data[6:]) == "\n"


def test_flush_rx_releases_codec_and_eol_state():
    chain = build_chain(["direct"], "CRLF")
    assert chain.decode_rx(b"x\r") == "x"
    assert chain.flush_rx() == "\r"
    chain.decode_rx(b"\xe2\x82")
    assert chain.flush_rx() == "\ufffd"


def test_encode_tx_and_literal():
    chain = build_chain(["default"], "CRLF", encoding="utf-8")
    assert chain.encode_tx("ü\n") == "ü\r\n".encode()
    assert chain.encode_literal("\x14\n") == b"\x14\n"


def test_chain_start_close_call_every_transform():
    calls = []

    class Probe(Transform):
        def start(self) -> None:
            calls.append("start")

        def close(self) -> None:
            calls.append("close")

    chain = FilterChain(["direct"], "LF")
    chain.transforms.append(Probe())
    chain.start()
    chain.close()
    assert calls == ["start", "close"]


# -- codec -------------------------------------------------------------------------


def test_codec_keeps_partial_sequence():
    c = Codec()
    assert c.decode(b"\xf0\x9f") == ""
    assert c.decode(b"\x98\x80!") == "\U0001f600!"
    assert c.encode("€") == b"\xe2\x82\xac"


def test_codec_replaces_invalid_bytes():
    assert Codec().decode(b"a\xffb") == "a\ufffdb"


def test_codec_rejects_unknown_encoding():
    with pytest.raises(LookupError):
        Codec("no-such-codec")


@given(st.binary(), cuts_st, st.sampled_from(["utf-8", "utf-16-le", "latin-1", "cp1252"]))
def test_codec_chunking_never_loses_bytes(data, cuts, encoding):
    c = Codec(encoding)
    chunked = "".join(c.decode(p) for p in split_at(data, cuts)) + c.flush()
    assert chunked == data.decode(encoding, "replace")


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])), cuts_st)
def test_codec_utf8_round_trip(text, cuts):
    c = Codec()
    data = c.encode(text)
    assert "".join(c.decode(p) for p in split_at(data, cuts)) + c.flush() == text
