"""The relay's WebSocket layer: websockets' ServerProtocol under relay/websocket.py and http.py.

The fuzz tests compare what the relay takes from arbitrary bytes with an
independent reading of RFC 6455 written here (``reference``): every input is
either parsed into exactly the messages the reference finds, or refused with
the close code the reference names. Nothing is silently accepted.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pio_remote.relay import http
from pio_remote.relay import websocket as wsp
from pio_remote.relay.websocket import ProtocolViolation, ServerSocket

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = (
    "Host: relay\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
    f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n"
)
OPCODES = {0x0, 0x1, 0x2, 0x8, 0x9, 0xA}
CLOSE_CODES_OK = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}


def client_frame(
    opcode: int, payload: bytes, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    """A frame as a client sends it (masked)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((first, bit | n))
    elif n < 65536:
        head = bytes((first, bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, bit | 127)) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def opened(max_message: int = 100) -> ServerSocket:
    """A ServerSocket past the upgrade."""
    ws = ServerSocket(max_message)
    ws.proto.receive_data(f"GET /v1/agent HTTP/1.1\r\n{UPGRADE}\r\n".encode())
    (request,) = ws.proto.events_received()
    answer, accepted = http.upgrade(ws, request)
    assert accepted, answer
    return ws


# ---- an independent reading of RFC 6455 (server side, no extensions) -------------------


def reference(data: bytes, max_message: int) -> tuple[list[tuple[int, bytes]], int | None]:
    """(messages and control frames, close code of the first violation or None)."""
    out: list[tuple[int, bytes]] = []
    pos, parts, kind = 0, [], 0
    while len(data) - pos >= 2:
        b0, b1 = data[pos], data[pos + 1]
        opcode, fin, rsv = b0 & 0x0F, b0 & 0x80, b0 & 0x70
        if opcode not in OPCODES or not b1 & 0x80:
            return out, 1002
        size, head = b1 & 0x7F, pos + 2
        if size >= 126:
            width = 2 if size == 126 else 8
            if len(data) - head < width:
                break
            size = int.from_bytes(data[head : head + width], "big")
            head += width
        limit = max_message - sum(map(len, parts)) if kind else max_message
        if size > limit:
            return out, 1009
        if len(data) - head < 4 + size:
            break
        key = data[head : head + 4]
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(data[head + 4 : head + 4 + size]))
        pos = head + 4 + size
        if rsv or (opcode >= 8 and (size > 125 or not fin)):
            return out, 1002
        if opcode in (1, 2):
            if kind:
                return out, 1002
            if fin:
                out.append((opcode, payload))
            else:
                parts, kind = [payload], opcode
        elif opcode == 0:
            if not kind:
                return out, 1002
            parts.append(payload)
            if fin:
                out.append((kind, b"".join(parts)))
                parts, kind = [], 0
        elif opcode == 8:
            if len(payload) == 1:
                return out, 1002
            if payload:
                code = int.from_bytes(payload[:2], "big")
                try:
                    payload[2:].decode()
                except UnicodeDecodeError:
                    return out, 1007
                if code not in CLOSE_CODES_OK and not 3000 <= code < 5000:
                    return out, 1002
            if kind:
                return out, 1002
            out.append((opcode, payload))
            return out, None  # everything after a Close is discarded
        else:
            out.append((opcode, payload))
    return out, None


def run(ws: ServerSocket, stream: bytes, splits: list[int]) -> tuple[list, int | None]:
    got: list[tuple[int, bytes]] = []
    for a, b in zip([0, *splits], [*splits, len(stream)], strict=True):
        try:
            got += ws.feed(stream[a:b])
        except ProtocolViolation as exc:
            return got, exc.code
        if any(op == wsp.OP_CLOSE for op, _ in got):
            break
    return got, None


def check_outcome(stream: bytes, splits: list[int], max_message: int) -> None:
    ws = opened(max_message)
    got, code = run(ws, stream, splits)
    want, want_code = reference(stream, max_message)
    assert code == want_code
    if code is None:
        assert got == want
        return
    # A refusal: what came before the bad frame is a prefix of the good messages,
    # and the goodbye is the relay's ERROR frame, then a Close with that code.
    assert got == want[: len(got)]
    wire = ws.goodbye(b"\x05error", 4400, "ignored")
    while wire.startswith(b"\x8a"):  # pongs to pings before the bad frame
        wire = wire[2 + wire[1] :]
    assert wire[:8] == b"\x82\x06\x05error"
    assert wire[8] == 0x88 and int.from_bytes(wire[10:12], "big") == code


frame_specs = st.lists(
    st.tuples(
        st.sampled_from([0x0, 0x1, 0x2, 0x2, 0x2, 0x3, 0x8, 0x9, 0xA, 0xB]),  # opcode
        st.booleans() | st.just(True),  # fin
        st.just(True) | st.booleans(),  # masked
        st.just(0) | st.integers(0, 7),  # rsv
        st.integers(0, 140) | st.sampled_from([0, 1, 126, 200]),  # payload size
        st.sampled_from(
            [
                b"",
                struct.pack("!H", 1000) + b"bye",
                struct.pack("!H", 4000),
                struct.pack("!H", 1005),
                struct.pack("!H", 999),
                b"\x03\xe8\xff",
                b"x",
            ]
        ),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(frame_specs, st.data())
def test_frames_are_parsed_or_refused_as_rfc_6455_says(specs: list, data: st.DataObject) -> None:
    stream = b""
    for opcode, fin, masked, rsv, size, close in specs:
        payload = close if opcode == 0x8 else bytes(size)
        stream += client_frame(opcode, payload, fin=fin, mask=masked, rsv=rsv)
    splits = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    check_outcome(stream, splits, 100)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.data())
def test_garbage_is_parsed_or_refused_as_rfc_6455_says(garbage: bytes, data: st.DataObject) -> None:
    splits = sorted(data.draw(st.lists(st.integers(0, len(garbage)), max_size=4)))
    check_outcome(garbage, splits, 100)


messages = st.lists(st.binary(max_size=3000), max_size=6)


@settings(max_examples=60, deadline=None)
@given(messages, st.data())
def test_fragmented_stream_yields_the_messages(msgs: list[bytes], data: st.DataObject) -> None:
    stream = b""
    for msg in msgs:
        cuts = sorted(data.draw(st.lists(st.integers(0, len(msg)), max_size=3)))
        pieces = [msg[a:b] for a, b in zip([0, *cuts], [*cuts, len(msg)], strict=True)]
        for i, piece in enumerate(pieces):
            opcode = wsp.OP_BINARY if i == 0 else 0x0
            stream += client_frame(opcode, piece, fin=i == len(pieces) - 1)
            if data.draw(st.booleans()):
                stream += client_frame(wsp.OP_PING, b"p")  # control frames may interleave
    ws = opened(65540)
    splits = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    got, code = run(ws, stream, splits)
    assert code is None
    assert [payload for op, payload in got if op == wsp.OP_BINARY] == msgs
    pongs = ws.pending()  # the protocol answered every ping
    assert pongs.count(b"\x8a\x01p") == sum(op == wsp.OP_PING for op, _ in got)


def test_size_is_checked_from_the_header() -> None:
    ws = opened(65540)
    header_only = client_frame(wsp.OP_BINARY, b"x" * 70000)[:14]
    with pytest.raises(ProtocolViolation) as exc:
        ws.feed(header_only)  # nothing of the payload has arrived yet
    assert exc.value.code == 1009


# ---- the upgrade and plain answers -----------------------------------------------------


def request(head: str) -> object:
    ws = ServerSocket(100)
    ws.proto.receive_data(head.encode())
    (req,) = ws.proto.events_received()
    return ws, req


def test_upgrade_answer_carries_the_rfc_example_key() -> None:
    ws, req = request(f"GET /v1/agent HTTP/1.1\r\n{UPGRADE}\r\n")
    answer, accepted = http.upgrade(ws, req)  # type: ignore[arg-type]
    assert accepted and answer.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer


@pytest.mark.parametrize(
    ("head", "status"),
    [
        ("GET /v1/agent HTTP/1.1\r\nHost: relay\r\n\r\n", 426),
        (f"POST /v1/agent HTTP/1.1\r\n{UPGRADE}\r\n", 405),
        ("GET /v1/agent HTTP/1.1\r\n" + UPGRADE.replace("Version: 13", "Version: 8") + "\r\n", 400),
        ("GET /v1/agent HTTP/1.1\r\n" + UPGRADE.replace(KEY, "c2hvcnQ=") + "\r\n", 400),
    ],
)
def test_bad_upgrades_are_refused(head: str, status: int) -> None:
    ws, req = request(head)
    answer, accepted = http.upgrade(ws, req)  # type: ignore[arg-type]
    assert not accepted
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"Cache-Control: no-store" in answer


def test_plain_answers_go_through_the_protocol() -> None:
    ws, _ = request("GET /metrics HTTP/1.1\r\nHost: relay\r\n\r\n")
    answer = http.response(ws, 200, "x 1\n", content_type="text/plain; version=0.0.4")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b"x 1\n"
    assert b"Content-Type: text/plain; version=0.0.4" in head
    assert b"Connection: close" in head and b"Content-Length: 4" in head
