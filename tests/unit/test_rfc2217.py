"""The RFC 2217 server state machine, byte for byte, without sockets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pio_remote.client import rfc2217 as r
from pio_remote.client.forward_serial import parse_listen
from pio_remote.wire.serial_events import SerialSettings


def iac(*codes: int) -> bytes:
    return bytes([r.IAC, *codes])


def sb(command: int, value: bytes = b"") -> bytes:
    return iac(r.SB, r.COM_PORT_OPTION, command) + value.replace(b"\xff", b"\xff\xff") + iac(r.SE)


def server() -> r.Rfc2217Server:
    srv = r.Rfc2217Server(SerialSettings())
    srv.start()
    srv.data_to_send()
    return srv


def test_start_offers_binary_sga_and_com_port_option():
    srv = r.Rfc2217Server(SerialSettings())
    srv.start()
    out = srv.data_to_send()
    for verb, option in [
        (r.WILL, r.BINARY),
        (r.DO, r.BINARY),
        (r.WILL, r.SGA),
        (r.WILL, r.COM_PORT_OPTION),
    ]:
        assert iac(verb, option) in out


def test_negotiation_as_pyserial_does_it_has_no_loops():
    srv = server()
    # pyserial's client opens with these requests.
    hello = iac(r.DO, r.ECHO) + iac(r.WILL, r.SGA) + iac(r.DO, r.SGA) + iac(r.DO, r.COM_PORT_OPTION)
    hello += iac(r.WILL, r.COM_PORT_OPTION)
    assert srv.receive_data(hello) == []
    out = srv.data_to_send()
    assert iac(r.WONT, r.ECHO) in out  # we do not echo
    assert iac(r.DO, r.SGA) in out and iac(r.DO, r.COM_PORT_OPTION) in out
    assert iac(r.WILL, r.SGA) not in out  # already offered: DO was the answer, not a request
    assert sb(r.NOTIFY_MODEMSTATE + 100, bytes([r.DEFAULT_MODEMSTATE])) in out
    # Answers to our own offers, and repeats, get no reply.
    srv.receive_data(iac(r.DO, r.BINARY) + iac(r.WILL, r.BINARY) + iac(r.DO, r.ECHO))
    assert srv.data_to_send() == b""


def test_settings_are_applied_and_echoed():
    srv = server()
    events = srv.receive_data(sb(r.SET_BAUDRATE, struct.pack(">I", 115200)))
    assert events == [r.SettingsRequested({"baudrate": 115200})]
    assert srv.data_to_send() == sb(r.SET_BAUDRATE + 100, struct.pack(">I", 115200))
    events = srv.receive_data(
        sb(r.SET_DATASIZE, b"\x07") + sb(r.SET_PARITY, b"\x03") + sb(r.SET_STOPSIZE, b"\x02")
    )
    assert events == [
        r.SettingsRequested({"bytesize": 7}),
        r.SettingsRequested({"parity": "E"}),
        r.SettingsRequested({"stopbits": 2}),
    ]
    assert srv.settings.describe() == "115200 7-E-2"


def test_zero_values_are_queries():
    srv = server()
    srv.receive_data(sb(r.SET_BAUDRATE, struct.pack(">I", 57600)))
    srv.data_to_send()
    assert srv.receive_data(sb(r.SET_BAUDRATE, bytes(4)) + sb(r.SET_PARITY, b"\x00")) == []
    out = srv.data_to_send()
    assert sb(r.SET_BAUDRATE + 100, struct.pack(">I", 57600)) in out
    assert sb(r.SET_PARITY + 100, b"\x01") in out


def test_control_lines_break_flow_and_purge():
    srv = server()
    events = srv.receive_data(
        sb(r.SET_CONTROL, b"\x09")  # DTR off
        + sb(r.SET_CONTROL, b"\x0b")  # RTS on
        + sb(r.SET_CONTROL, b"\x03")  # hardware flow control
        + sb(r.SET_CONTROL, b"\x05")  # BREAK on
        + sb(r.PURGE_DATA, b"\x01")  # purge what the device sent us
    )
    assert events == [
        r.SettingsRequested({"dtr": False}),
        r.SettingsRequested({"rts": True}),
        r.SettingsRequested({"xonxoff": False, "rtscts": True}),
        r.BreakRequested(True),
        r.PurgeRequested(input=True, output=False),
    ]
    srv.data_to_send()
    srv.receive_data(sb(r.SET_CONTROL, b"\x07") + sb(r.SET_CONTROL, b"\x00"))
    assert srv.data_to_send() == sb(r.SET_CONTROL + 100, b"\x09") + sb(r.SET_CONTROL + 100, b"\x03")


def test_bad_values_are_answered_with_the_current_one():
    srv = server()
    assert srv.receive_data(sb(r.SET_DATASIZE, b"\x09")) == []
    assert srv.data_to_send() == sb(r.SET_DATASIZE + 100, b"\x08")


def test_flow_suspend_and_signature():
    srv = server()
    events = srv.receive_data(sb(r.FLOWCONTROL_SUSPEND) + sb(r.FLOWCONTROL_RESUME) + sb(0))
    assert events == [r.FlowSuspended(True), r.FlowSuspended(False)]
    assert srv.data_to_send() == sb(100, b"pio-remote")


@given(st.binary(max_size=600), st.integers(1, 50))
def test_data_round_trips_through_iac_escaping_in_any_split(data, cut):
    srv = server()
    wire = r.Rfc2217Server.escape(data)
    got = b""
    for i in range(0, len(wire), cut):
        for event in srv.receive_data(wire[i : i + cut]):
            assert isinstance(event, r.DataReceived)
            got += event.data
    assert got == data


def test_data_and_commands_keep_their_order():
    srv = server()
    events = srv.receive_data(b"ab" + sb(r.SET_BAUDRATE, struct.pack(">I", 300)) + b"\xff\xffc")
    assert events == [
        r.DataReceived(b"ab"),
        r.SettingsRequested({"baudrate": 300}),
        r.DataReceived(b"\xffc"),
    ]


def test_listen_addresses_default_to_loopback():
    assert parse_listen("127.0.0.1:4000") == ("127.0.0.1", 4000)
    assert parse_listen("4001") == ("127.0.0.1", 4001)
    assert parse_listen(":4002") == ("127.0.0.1", 4002)
    assert parse_listen("[::1]:4003") == ("::1", 4003)
    for bad in ("localhost:http", "127.0.0.1:70000"):
        with pytest.raises(ValueError, match="--listen"):
            parse_listen(bad)
