"""The agent serves exactly the handlers its registry lists (agent/registry.py): a
handler is never served, or lost, because of which modules happen to be imported."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import pio_remote.agent
from pio_remote.agent import registry
from pio_remote.agent.handlers import CallContext, handler, method_of


def named_handlers() -> dict[str, str]:
    """Every function in pio_remote.agent that names a method with @handler."""
    found: dict[str, str] = {}
    for info in pkgutil.walk_packages(pio_remote.agent.__path__, "pio_remote.agent."):
        module = importlib.import_module(info.name)
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ == info.name and (method := method_of(fn)) is not None:
                found[method] = f"{info.name}.{name}"
    return found


def test_every_named_handler_is_served_by_its_own_name():
    served = {method: f"{fn.__module__}.{fn.__name__}" for method, fn in registry.HANDLERS.items()}
    assert served == named_handlers()
    assert {"agent.info", "upload.flash", "monitor.open", "test.run"} <= set(served)


def test_naming_a_handler_serves_nothing_by_itself():
    @handler("test.unlisted")
    async def unlisted(ctx: CallContext) -> None:
        pass

    assert method_of(unlisted) == "test.unlisted"
    assert "test.unlisted" not in registry.HANDLERS


def test_an_unnamed_or_twice_named_handler_is_refused():
    async def anonymous(ctx: CallContext) -> None:
        pass

    with pytest.raises(TypeError, match="anonymous has no @handler name"):
        registry.build([anonymous])
    with pytest.raises(TypeError, match="agent.info is answered by two handlers"):
        registry.build([*registry.SERVED, handler("agent.info")(anonymous)])
