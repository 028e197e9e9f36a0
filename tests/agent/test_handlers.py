"""Call parameters are checked against each handler's declared types, and a handler's
bug reaches the client as a short id, never as its text (issue 8, code health)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from pio_remote.agent import handlers, service
from pio_remote.agent.handlers import HANDLERS, CallFailed, bind_params, param_spec


def test_every_handler_declares_checkable_parameter_types():
    for method, fn in HANDLERS.items():
        assert isinstance(param_spec(fn), dict), method


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("device.mdns", {"timeout": "x"}, "parameter 'timeout' must be a number"),
        ("device.mdns", {"timeout": True}, "parameter 'timeout' must be a number"),
        ("diag.source", {}, "missing parameter 'size'"),
        ("diag.source", {"size": 1.5}, "parameter 'size' must be an integer"),
        ("upload.put", {"name": "a", "size": 1, "sha256": 5}, "'sha256' must be a string"),
        ("upload.check", {"files": [1]}, r"'files\[1\]' must be an object, not an integer"),
        ("upload.flash", {"targets": "upload"}, "'targets' must be a list of"),
        ("upload.flash", {"verbose": "yes"}, "'verbose' must be true or false"),
        ("agent.info", {"x": 1}, "unknown parameter 'x'"),
        ("device.mdns", {"timout": 2}, r"'timout' \(did you mean 'timeout'\?\)"),
        ("monitor.open", {"port": "/dev/x", "settings": [1]}, "'settings' must be"),
    ],
)
def test_bad_params_name_the_parameter(method, params, message):
    with pytest.raises(CallFailed, match=message) as err:
        bind_params(HANDLERS[method], method, params)
    assert err.value.code == "bad_params"
    assert err.value.message.startswith(f"{method}: ")


def test_good_params_pass_unchanged():
    params = {"port": "/dev/x", "env": None, "files": [{"name": "a"}], "targets": ["upload"]}
    assert bind_params(HANDLERS["upload.flash"], "upload.flash", params) == params
    assert bind_params(HANDLERS["device.mdns"], "device.mdns", {"timeout": 2}) == {"timeout": 2}


async def test_a_handler_bug_is_logged_and_the_client_gets_only_an_id(caplog, monkeypatch):
    async def crash(ctx: handlers.CallContext, n: int = 0) -> Any:
        raise RuntimeError("secret text from /home/owner/.aws")

    monkeypatch.setitem(HANDLERS, "test.crash", crash)
    channel = SimpleNamespace(pairing_invite=None, agent=None)
    call = SimpleNamespace(method="test.crash", params={"n": 1})
    with caplog.at_level(logging.ERROR, logger="pio_remote.agent"):
        ok, value, code, message = await service._invoke(channel, call)  # type: ignore[arg-type]
    assert (ok, value, code) == (False, None, "internal")
    assert "secret" not in message and "Traceback" not in message
    error_id = message.split("(id ")[1].split(")")[0]
    expected = f"test.crash failed with an internal error (id {error_id}): see the agent's log"
    assert message == expected
    assert error_id in caplog.text and "secret text from /home/owner/.aws" in caplog.text
