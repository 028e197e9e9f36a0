"""The monitor's control vocabulary: settings validation and event encoding."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pio_remote.wire import serial_events as ev
from pio_remote.wire.serial_events import SerialSettings


def test_defaults_are_platformio_defaults():
    s = SerialSettings()
    assert (s.baudrate, s.bytesize, s.parity, s.stopbits) == (9600, 8, "N", 1)
    assert (s.xonxoff, s.rtscts, s.dtr, s.rts) == (False, False, None, None)
    assert s.describe() == "9600 8-N-1"
    assert SerialSettings(115200, stopbits=1.5, rtscts=True).describe() == "115200 8-N-1.5 RTS/CTS"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"baudrate": 0}, "out of range"),
        ({"baudrate": "9600"}, "integer"),
        ({"baudrate": True}, "integer"),
        ({"bytesize": 9}, "data bits"),
        ({"parity": "X"}, "parity"),
        ({"stopbits": 3}, "stop bits"),
        ({"dtr": "yes"}, "dtr"),
        ({"xonxoff": 1}, "xonxoff"),
        ({"speed": 9600}, "unknown serial setting 'speed'"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(changes, message):
    with pytest.raises(ValueError, match=message):
        SerialSettings().updated(changes)


@given(
    baud=st.integers(1, ev.MAX_BAUDRATE),
    bytesize=st.sampled_from(ev.BYTESIZES),
    parity=st.sampled_from(ev.PARITIES),
    stopbits=st.sampled_from(ev.STOPBITS),
    dtr=st.sampled_from([None, True, False]),
)
def test_settings_survive_json(baud, bytesize, parity, stopbits, dtr):
    s = SerialSettings(baud, bytesize, parity, stopbits, dtr=dtr)
    assert SerialSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_ops_round_trip_and_validate_on_the_sending_side():
    assert ev.parse_op(ev.set_op(baudrate=115200, dtr=False)) == ev.SetSettings(
        {"baudrate": 115200, "dtr": False}
    )
    assert ev.parse_op(ev.break_op(True)) == ev.SetBreak(True)
    assert ev.parse_op(ev.purge_op(input=True, output=False)) == ev.Purge(True, False)
    with pytest.raises(ValueError):
        ev.set_op(baudrate=-1)
    with pytest.raises(ValueError, match="unknown monitor op"):
        ev.parse_op({"op": "reboot"})
    with pytest.raises(ValueError, match="settings"):
        ev.parse_op({"op": "set", "settings": 5})


def test_notices_round_trip_and_unknown_kinds_are_ignored():
    s = SerialSettings(57600, dtr=True)
    assert ev.parse_notice(ev.opened("/dev/x", s, resumed=True)) == ev.Opened("/dev/x", s, True)
    assert ev.parse_notice(ev.applied(s)) == ev.Applied(s)
    assert ev.parse_notice(ev.lost("/dev/x", "EIO")) == ev.Lost("/dev/x", "EIO")
    assert ev.parse_notice(ev.paused("/dev/x", "upload by bob")) == ev.Paused(
        "/dev/x", "upload by bob"
    )
    assert ev.parse_notice(ev.warning("no DTR")) == ev.AgentWarning("no DTR")
    assert ev.parse_notice({"event": "from-the-future"}) is None
    broken = ev.parse_notice({"event": "opened", "settings": {"baudrate": -5}})
    assert isinstance(broken, ev.AgentWarning) and "malformed" in broken.message
