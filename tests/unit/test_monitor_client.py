"""Client-side pure pieces: reconnect policy and the menu's line prompt."""

from __future__ import annotations

import trio

from pio_remote.client.api import RemoteError
from pio_remote.client.monitor.remote import is_fatal
from pio_remote.client.monitor.terminal import LineEditor
from pio_remote.net.channel import ChannelClosed
from pio_remote.net.link import RelayError


def test_what_another_attempt_can_fix_is_retried():
    assert not is_fatal(ChannelClosed("relay connection lost"))
    assert not is_fatal(RelayError("cannot reach relay"))
    assert not is_fatal(RelayError("agent 'x' is offline or not shared"))
    assert not is_fatal(RemoteError("port in use", "port_busy"))
    assert not is_fatal(trio.TooSlowError())
    for code in ("not_paired", "key_mismatch", "bad_params"):
        assert is_fatal(RemoteError("no", code))
    assert is_fatal(RelayError("token revoked", "token_revoked"))
    assert is_fatal(RemoteError("another key's monitor", "resume_refused"))
    assert is_fatal(ValueError("a bug"))


def test_line_editor_edits_accepts_and_cancels():
    ed = LineEditor("baud: ")
    screen = "".join(ed.feed(ch) for ch in "1152\x7f00")
    assert (ed.text, ed.done) == ("11500", False)
    assert screen == "1152\b \b00"
    assert ed.feed("\x7f") == "\b \b" and ed.text == "1150"
    assert ed.feed("\r") == "\n" and ed.done and not ed.cancelled
    empty = LineEditor("x")
    assert empty.feed("\x7f") == ""  # nothing to erase: the prompt stays intact
    assert empty.feed("\x01") == ""  # control keys are not text
    assert empty.feed("\x03") == " (cancelled)\n" and empty.cancelled
