"""The sans-IO WebSocket layer: handshake answers, frame parsing, limits."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import websocket as wsp
from relay.websocket import FrameParser, ProtocolViolation

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = {
    "upgrade": "websocket",
    "connection": "keep-alive, Upgrade",
    "sec-websocket-version": "13",
    "sec-websocket-key": KEY,
}


def client_frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True) -> bytes:
    """A frame as a client sends it (masked)."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, (0x80 if mask else 0) | n))
    elif n < 65536:
        head = bytes((first, (0x80 if mask else 0) | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, (0x80 if mask else 0) | 127)) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def test_accept_key_matches_rfc_example() -> None:
    assert wsp.accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    answer = wsp.accept_response(UPGRADE)
    assert answer.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n" in answer


def test_check_upgrade() -> None:
    assert wsp.check_upgrade("GET", UPGRADE) is None
    assert wsp.check_upgrade("GET", {})[0] == 426  # type: ignore[index]
    assert wsp.check_upgrade("POST", UPGRADE)[0] == 400  # type: ignore[index]
    old = {**UPGRADE, "sec-websocket-version": "8"}
    assert "version 13" in wsp.check_upgrade("GET", old)[1]  # type: ignore[index]
    bad_key = {**UPGRADE, "sec-websocket-key": "c2hvcnQ="}
    assert wsp.check_upgrade("GET", bad_key)[0] == 400  # type: ignore[index]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_server_frame_header_lengths(size: int) -> None:
    header = wsp.frame_header(wsp.OP_BINARY, size)
    assert header[0] == 0x82
    if size < 126:
        assert header[1] == size and len(header) == 2
    elif size < 65536:
        assert header[1] == 126 and struct.unpack("!H", header[2:])[0] == size
    else:
        assert header[1] == 127 and struct.unpack("!Q", header[2:])[0] == size


def test_close_frame_bounds_the_reason() -> None:
    frame = wsp.close_frame(4400, "é" * 200)
    assert frame[1] <= wsp.MAX_CONTROL_PAYLOAD
    frame[4:].decode()  # still valid UTF-8 after the cut


def test_portable_unmask_agrees_with_the_fast_one() -> None:
    data, key = os.urandom(65541), os.urandom(4)
    expected = bytes(b ^ key[i % 4] for i, b in enumerate(data[:1000]))
    assert wsp._unmask_portable(data[:1000], key) == expected
    assert wsp.unmask(memoryview(data), key) == wsp._unmask_portable(data, key)


messages = st.lists(st.binary(max_size=3000), max_size=6)


@settings(max_examples=60, deadline=None)
@given(messages, st.data())
def test_fragmented_stream_yields_the_messages(msgs: list[bytes], data: st.DataObject) -> None:
    stream = b""
    for msg in msgs:
        cuts = sorted(data.draw(st.lists(st.integers(0, len(msg)), max_size=3)))
        pieces = [msg[a:b] for a, b in zip([0, *cuts], [*cuts, len(msg)], strict=True)]
        for i, piece in enumerate(pieces):
            opcode = wsp.OP_BINARY if i == 0 else wsp.OP_CONT
            stream += client_frame(opcode, piece, fin=i == len(pieces) - 1)
            if data.draw(st.booleans()):
                stream += client_frame(wsp.OP_PING, b"p")  # control frames may interleave
    parser = FrameParser(65540)
    got = []
    splits = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    for a, b in zip([0, *splits], [*splits, len(stream)], strict=True):
        got += parser.feed(stream[a:b])
    assert [payload for op, payload in got if op == wsp.OP_BINARY] == msgs
    assert all(op in (wsp.OP_BINARY, wsp.OP_PING) for op, _ in got)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_raises_only_protocol_violations(garbage: bytes) -> None:
    parser = FrameParser(1000)
    try:
        parser.feed(garbage)
    except ProtocolViolation as exc:
        assert exc.code in (1002, 1007, 1009)


def test_close_payloads() -> None:
    parser = FrameParser(100)
    assert parser.feed(client_frame(wsp.OP_CLOSE, b"")) == [(wsp.OP_CLOSE, b"")]
    assert wsp.parse_close(b"") == (1005, "")
    assert wsp.parse_close(struct.pack("!H", 1000) + b"bye") == (1000, "bye")
    with pytest.raises(ProtocolViolation):
        wsp.parse_close(b"x")
    with pytest.raises(ProtocolViolation):
        wsp.parse_close(b"\x03\xe8\xff")


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    [
        (client_frame(wsp.OP_BINARY, b"x", mask=False), 1002, "masked"),
        (bytes((0xC2, 0x81)) + b"\0" * 5, 1002, "reserved"),
        (client_frame(wsp.OP_PING, b"x" * 126), 1002, "125"),
        (client_frame(wsp.OP_PING, b"x", fin=False), 1002, "fragmented"),
        (client_frame(wsp.OP_CONT, b"x"), 1002, "continuation"),
        (client_frame(0x3, b"x"), 1002, "opcode"),
        (client_frame(wsp.OP_BINARY, b"x" * 101), 1009, "larger"),
    ],
)
def test_violations(frame: bytes, code: int, words: str) -> None:
    with pytest.raises(ProtocolViolation, match=words) as exc:
        FrameParser(100).feed(frame)
    assert exc.value.code == code


def test_size_is_checked_from_the_header_and_across_fragments() -> None:
    header_only = client_frame(wsp.OP_BINARY, b"x" * 70000)[:14]
    with pytest.raises(ProtocolViolation) as exc:
        FrameParser(65540).feed(header_only)  # nothing of the payload has arrived yet
    assert exc.value.code == 1009
    parser = FrameParser(100)
    parser.feed(client_frame(wsp.OP_BINARY, b"x" * 60, fin=False))
    with pytest.raises(ProtocolViolation):
        parser.feed(client_frame(wsp.OP_CONT, b"x" * 41))
    parser = FrameParser(100)
    parser.feed(client_frame(wsp.OP_BINARY, b"x" * 60, fin=False))
    with pytest.raises(ProtocolViolation, match="inside"):
        parser.feed(client_frame(wsp.OP_BINARY, b"y"))


def test_parser_skips_an_oversized_frame_and_reads_on() -> None:
    big = client_frame(wsp.OP_BINARY, b"x" * 500)
    after = client_frame(wsp.OP_CLOSE, struct.pack("!H", 1000))
    for split in (4, 20, 300, len(big), len(big) + 2):  # 4: the header is complete
        parser = FrameParser(100)
        stream = big + after
        with pytest.raises(ProtocolViolation):
            parser.feed(stream[:split])
        assert parser.feed(stream[split:]) == [(wsp.OP_CLOSE, struct.pack("!H", 1000))], split
