"""Call parameters are checked against each handler's declared types, and a handler's
bug reaches the client as a short id, never as its text (issue 8, code health)."""

from __future__ import annotations

import functools
import inspect
import logging
from pathlib import Path
from typing import Any

import pytest
import trio

from pio_remote import home
from pio_remote.agent import handlers, schema
from pio_remote.agent.config import AgentConfig
from pio_remote.agent.handlers import CallFailed, bind_params, param_spec
from pio_remote.agent.registry import HANDLERS
from pio_remote.agent.service import run_agent
from pio_remote.agent.state import AgentState
from pio_remote.client.api import Client, RemoteError
from pio_remote.relay.accounts import Accounts
from pio_remote.relay.server import serve


def test_every_handler_declares_checkable_parameter_types():
    for method, fn in HANDLERS.items():
        declared = list(inspect.signature(fn).parameters)[1:]  # after ctx
        spec = param_spec(fn)
        assert list(spec) == declared, method
        for name, param in spec.items():
            assert schema.describe(param.kind), (method, name)


def test_a_handler_whose_parameter_has_no_checker_is_refused_before_any_call():
    async def takes_bytes(ctx: handlers.CallContext, data: bytes) -> None: ...

    async def takes_star(ctx: handlers.CallContext, *sizes: int) -> None: ...

    with pytest.raises(TypeError, match="no checker for"):
        param_spec(takes_bytes)
    with pytest.raises(TypeError, match="must be a named one"):
        param_spec(takes_star)


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


class _Online(logging.Handler):
    """Sets ``event`` when the agent logs that it is online (its ready line)."""

    def __init__(self, event: trio.Event):
        super().__init__()
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("agent alice/lab online"):
            self.event.set()


async def test_a_handler_bug_is_logged_and_the_client_gets_only_an_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    """Through a real relay, agent service and client session, all in this process."""

    async def crash(ctx: handlers.CallContext, n: int = 0) -> Any:
        raise RuntimeError("secret text from /home/owner/.aws")

    monkeypatch.setitem(HANDLERS, "test.crash", crash)
    with Accounts(tmp_path / "relay") as accounts:
        token = accounts.add("alice")
    desk = tmp_path / "home"
    desk.mkdir()
    online = trio.Event()
    watcher = _Online(online)
    logging.getLogger("pio_remote.agent").addHandler(watcher)
    try:
        with caplog.at_level(logging.INFO, logger="pio_remote.agent"):
            async with trio.open_nursery() as nursery:
                port = await nursery.start(
                    functools.partial(serve, "127.0.0.1", 0, tmp_path / "relay")
                )
                url = f"ws://127.0.0.1:{port}"
                agent = AgentState("lab", desk, home.load_identity(desk), AgentConfig())
                nursery.start_soon(run_agent, agent, home.Credentials(url, token))
                with trio.fail_after(10):
                    await online.wait()
                    async with (
                        Client.connect(url, token, desk) as client,
                        client.session("alice/lab") as session,
                    ):
                        with pytest.raises(RemoteError) as err:
                            await session.call("test.crash", n=1)
                        assert await session.call("agent.info")  # the agent still serves
                nursery.cancel_scope.cancel()
    finally:
        logging.getLogger("pio_remote.agent").removeHandler(watcher)
    assert err.value.code == "internal"
    message = str(err.value)
    assert "secret" not in message and "Traceback" not in message
    error_id = message.split("(id ")[1].split(")")[0]
    expected = f"test.crash failed with an internal error (id {error_id}): see the agent's log"
    assert expected in message
    assert error_id in caplog.text and "secret text from /home/owner/.aws" in caplog.text
