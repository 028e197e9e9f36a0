"""The agent's monitor.open handler against real ptys, in process (no relay, no client).

A fake call stands in for the session: what the handler sends arrives on a
memory channel, and the test feeds it client DATA/EVENTs. The port registry is
the real one, so an upload's ``exclusive()`` pauses the monitor as it would.
"""

from __future__ import annotations

import errno
import os
import select
import termios
import tty
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from pio_remote.agent.config import AgentConfig, Globs
from pio_remote.agent.handlers import CallFailed
from pio_remote.agent.membudget import CreditBook
from pio_remote.agent.serial import monitor as agent_monitor
from pio_remote.agent.serial import stream as agent_stream
from pio_remote.agent.serial.portlock import PortBusy, PortRegistry
from pio_remote.wire import serial_events as ev


class FakeCall:
    """The agent's view of a call: send() goes to the test, receive() comes from it."""

    def __init__(self) -> None:
        self.cancel_scope = None
        self.cancel_requested = False
        self.to_test_send, self.to_test = trio.open_memory_channel[Any](1000)
        self.to_agent, self._from_test = trio.open_memory_channel[Any](1000)

    async def send(self, data: bytes) -> None:
        await self.to_test_send.send(bytes(data))

    async def send_event(self, body: dict[str, Any]) -> None:
        await self.to_test_send.send(body)

    async def receive(self) -> bytes | dict[str, Any] | None:
        return await self._from_test.receive()


class Pty:
    """A device on a pty whose slave is reached through a symlink, like a real board."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master, slave = os.openpty()
        tty.setraw(slave)
        os.symlink(os.ttyname(slave), link)
        os.close(slave)  # only the monitor holds the slave: its close is visible here

    async def read(self, size: int) -> bytes:
        """What the monitor wrote to the port (without blocking the agent's tasks)."""
        data = b""
        while len(data) < size:
            await trio.lowlevel.wait_readable(self.master)
            data += os.read(self.master, size - len(data))
        return data

    def slave_closed(self) -> bool:
        """Nobody has the port open: the master reads EIO (Linux)."""
        ready, _, _ = select.select([self.master], [], [], 0)
        if not ready:
            return False
        try:
            os.read(self.master, 1)
        except OSError as exc:
            return exc.errno == errno.EIO
        return False

    def unplug(self) -> None:
        os.unlink(self.link)
        os.close(self.master)


def context(
    tmp_path: Path, call: FakeCall, registry: PortRegistry, backend: str = "fd"
) -> SimpleNamespace:
    config = AgentConfig(port_glob=Globs([str(tmp_path / "*")]), serial_backend=backend)
    book = CreditBook(config.agent_memory_bytes, config.session_memory_bytes, 1 << 20, 1024)
    agent = SimpleNamespace(
        config=config,
        ports=registry,
        agent_id="alice/lab-pi",
        name="lab-pi",
        streams={},
        keeper=None,  # no agent-wide nursery: the port lives and dies with the call
        credit_book=lambda: book,
    )
    channel = SimpleNamespace(holder="alice (test)", client_key=b"k" * 32)
    return SimpleNamespace(agent=agent, channel=channel, call=call)


async def next_event(call: FakeCall, kind: str) -> dict[str, Any]:
    """Skip device bytes until an event of ``kind`` arrives."""
    while True:
        item = await call.to_test.receive()
        if isinstance(item, dict) and item.get("event") == kind:
            return item


async def next_bytes(call: FakeCall, size: int) -> bytes:
    data = b""
    while len(data) < size:
        item = await call.to_test.receive()
        if isinstance(item, bytes):
            data += item
    return data


@pytest.fixture(params=["fd", "thread"])
def setup(tmp_path, request):
    """Each test on both serial backends (agent/serial/backend.py)."""
    call, registry = FakeCall(), PortRegistry()
    return call, registry, context(tmp_path, call, registry, request.param)


async def test_bytes_both_ways_settings_and_client_eof(tmp_path, setup):
    call, registry, ctx = setup
    dev = Pty(tmp_path / "board")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent_monitor.monitor_open, ctx, str(dev.link))
            opened = await next_event(call, "opened")
            assert opened["port"] == str(dev.link) and opened["resumed"] is False
            os.write(dev.master, b"from device")
            assert await next_bytes(call, 11) == b"from device"
            await call.to_agent.send(b"to device")
            assert await dev.read(9) == b"to device"

            await call.to_agent.send(ev.set_op(baudrate=115200, dtr=False))
            warning = await next_event(call, "warning")
            assert "DTR" in warning["message"]  # a pty has no DTR: warned, not fatal
            applied = ev.parse_notice(await next_event(call, "settings"))
            assert isinstance(applied, ev.Applied) and applied.settings.baudrate == 115200
            assert termios.tcgetattr(dev.master)[5] == termios.B115200  # the real line changed

            await call.to_agent.send(None)  # the client's EOF: writing ends, reading goes on
            os.write(dev.master, b"still here")
            assert await next_bytes(call, 10) == b"still here"
            nursery.cancel_scope.cancel()  # the client left: the call is cancelled
    assert dev.slave_closed()
    assert registry.holders() == {}


async def test_upload_pauses_the_monitor_and_it_resumes(tmp_path, setup):
    call, registry, ctx = setup
    dev = Pty(tmp_path / "board")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent_monitor.monitor_open, ctx, str(dev.link))
            await next_event(call, "opened")
            async with registry.exclusive(str(dev.link), "upload by bob"):
                paused = await next_event(call, "paused")
                assert paused["holder"] == "upload by bob"
                assert dev.slave_closed()  # the uploader has the port to itself
                await call.to_agent.send(b"typed during upload")
                dropped = await next_event(call, "warning")
                assert "dropped" in dropped["message"]
            resumed = await next_event(call, "opened")
            assert resumed["resumed"] is True
            os.write(dev.master, b"after upload")
            assert await next_bytes(call, 12) == b"after upload"
            nursery.cancel_scope.cancel()


async def test_unplug_is_reported_and_the_port_reopens(tmp_path, setup, monkeypatch):
    monkeypatch.setattr(agent_stream, "POLL_INTERVAL", 0.05)
    call, registry, ctx = setup
    dev = Pty(tmp_path / "board")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent_monitor.monitor_open, ctx, str(dev.link))
            await next_event(call, "opened")
            dev.unplug()
            lost = await next_event(call, "lost")
            assert lost["port"] == str(dev.link)
            assert registry.holders() == {str(dev.link): "alice (test)"}  # still ours
            dev = Pty(tmp_path / "board")
            assert (await next_event(call, "opened"))["resumed"] is True
            os.write(dev.master, b"back")
            assert await next_bytes(call, 4) == b"back"
            nursery.cancel_scope.cancel()


async def test_refusals_name_the_port_and_the_holder(tmp_path, setup):
    call, registry, ctx = setup
    dev = Pty(tmp_path / "board")
    with pytest.raises(CallFailed) as missing:
        await agent_monitor.monitor_open(ctx, str(tmp_path / "other"))
    assert missing.value.code == "no_such_port" and "device list" in missing.value.message
    with pytest.raises(CallFailed) as bad:
        await agent_monitor.monitor_open(ctx, str(dev.link), settings={"baudrate": 0})
    assert bad.value.code == "bad_params"
    async with registry.monitor(str(dev.link), "carol (client key 1234)"):
        with pytest.raises(CallFailed) as busy:
            await agent_monitor.monitor_open(ctx, str(dev.link))
    assert busy.value.code == "port_busy" and "carol (client key 1234)" in busy.value.message
    with pytest.raises(PortBusy):
        async with registry.exclusive(str(dev.link), "upload by dave"):
            async with registry.monitor(str(dev.link), "x"):
                pass


async def test_settings_the_port_refuses_are_a_warning_and_the_truth_is_reported(tmp_path, setup):
    """A pty here refuses 7 data bits with termios.error: warn, carry on, say what is in force."""
    call, registry, ctx = setup
    dev = Pty(tmp_path / "board")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent_monitor.monitor_open, ctx, str(dev.link))
            await next_event(call, "opened")
            await call.to_agent.send(ev.set_op(baudrate=57600, bytesize=7, parity="E"))
            warning = await next_event(call, "warning")
            assert "cannot set 57600 7-E-1" in warning["message"], warning
            applied = ev.parse_notice(await next_event(call, "settings"))
            assert isinstance(applied, ev.Applied)
            assert applied.settings.describe() == "9600 8-N-1"  # refused: nothing changed
            assert termios.tcgetattr(dev.master)[5] == termios.B9600

            await call.to_agent.send(ev.set_op(baudrate=115200))  # the session goes on
            applied = ev.parse_notice(await next_event(call, "settings"))
            assert isinstance(applied, ev.Applied) and applied.settings.baudrate == 115200
            os.write(dev.master, b"alive")
            assert await next_bytes(call, 5) == b"alive"
            nursery.cancel_scope.cancel()


async def test_opening_with_refused_settings_falls_back_and_says_so(tmp_path, setup):
    call, registry, ctx = setup
    dev = Pty(tmp_path / "board")
    wanted = {"baudrate": 115200, "bytesize": 7, "parity": "E"}
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent_monitor.monitor_open, ctx, str(dev.link), wanted)
            opened = ev.parse_notice(await next_event(call, "opened"))
            assert isinstance(opened, ev.Opened)
            assert opened.settings.describe() == "115200 8-N-1"  # in force, not as asked
            warning = await next_event(call, "warning")
            assert "115200 7-E-1" in warning["message"], warning  # refused or dropped: said
            assert termios.tcgetattr(dev.master)[5] == termios.B115200
            os.write(dev.master, b"alive")
            assert await next_bytes(call, 5) == b"alive"
            nursery.cancel_scope.cancel()


async def test_a_trickling_board_is_sent_in_batches_and_nothing_is_lost(tmp_path, setup):
    """Log lines a few ms apart go out gathered (fewer session messages), in order, all of them."""
    call, registry, ctx = setup
    dev = Pty(tmp_path / "board")
    lines = [b"log line %03d\r\n" % i for i in range(60)]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent_monitor.monitor_open, ctx, str(dev.link))
            await next_event(call, "opened")

            async def board() -> None:
                for text in lines:
                    os.write(dev.master, text)
                    await trio.sleep(0.002)  # the board's pace, not a wait for anything

            nursery.start_soon(board)
            messages, got = 0, b""
            while len(got) < len(b"".join(lines)):
                item = await call.to_test.receive()
                if isinstance(item, bytes):
                    messages += 1
                    got += item
            assert got == b"".join(lines)
            assert messages <= len(lines) // 3, f"{messages} messages for {len(lines)} lines"
            nursery.cancel_scope.cancel()


def session_of(ctx: SimpleNamespace, key: bytes = b"k" * 32) -> tuple[FakeCall, SimpleNamespace]:
    """Another session of the same agent: a new call, and the client key it proved."""
    call = FakeCall()
    channel = SimpleNamespace(holder="alice (test)", client_key=key)
    return call, SimpleNamespace(agent=ctx.agent, channel=channel, call=call)


async def test_a_lost_session_keeps_the_port_and_only_its_key_resumes_it(tmp_path, setup):
    call, registry, ctx = setup
    dev = Pty(tmp_path / "board")
    port = str(dev.link)
    with trio.fail_after(10):
        async with trio.open_nursery() as keeper:
            ctx.agent.keeper = keeper
            async with trio.open_nursery() as first:
                first.start_soon(agent_monitor.monitor_open, ctx, port)
                token = (await next_event(call, "opened"))["token"]
                os.write(dev.master, b"one")
                assert await next_bytes(call, 3) == b"one"
                first.cancel_scope.cancel()  # the session is lost: no CANCEL came
            (stream,) = ctx.agent.streams.values()
            os.write(dev.master, b"two")  # printed while nobody is there
            assert port in registry.holders()  # still held for the resume

            # The attacker: the right token and offset, from another client key.
            _, rogue = session_of(ctx, key=b"r" * 32)
            with pytest.raises(CallFailed) as refused:
                await agent_monitor.monitor_open(rogue, port, resume={"token": token, "offset": 3})
            assert refused.value.code == "resume_refused"
            with pytest.raises(CallFailed) as busy:
                await agent_monitor.monitor_open(rogue, port)
            assert busy.value.code == "port_busy"

            again, own = session_of(ctx)
            async with trio.open_nursery() as second:
                resume = {"token": token, "offset": 3}
                second.start_soon(agent_monitor.monitor_open, own, port, None, resume)
                opened = await next_event(again, "opened")
                assert (opened["continued"], opened["offset"], opened["missing"]) == (True, 3, 0)
                assert await next_bytes(again, 3) == b"two"  # from its offset: no gap, no repeat
                again.cancel_requested = True  # the client leaves on purpose
                second.cancel_scope.cancel()
            await stream.done.wait()  # and the port is freed at once, not after the grace
            assert registry.holders() == {} and dev.slave_closed()
            keeper.cancel_scope.cancel()


async def test_after_the_grace_period_the_port_closes_and_a_resume_is_a_new_open(tmp_path, setup):
    call, registry, ctx = setup
    ctx.agent.config.monitor_grace_seconds = 1
    dev = Pty(tmp_path / "board")
    port = str(dev.link)
    with trio.fail_after(10):
        async with trio.open_nursery() as keeper:
            ctx.agent.keeper = keeper
            async with trio.open_nursery() as first:
                first.start_soon(agent_monitor.monitor_open, ctx, port)
                token = (await next_event(call, "opened"))["token"]
                first.cancel_scope.cancel()
            (stream,) = ctx.agent.streams.values()
            lost_at = trio.current_time()
            await stream.done.wait()
            assert trio.current_time() - lost_at >= 1 and registry.holders() == {}
            again, own = session_of(ctx)
            async with trio.open_nursery() as second:
                resume = {"token": token, "offset": 0}
                second.start_soon(agent_monitor.monitor_open, own, port, None, resume)
                opened = await next_event(again, "opened")
                assert "no longer kept" in opened["lost"] and not opened.get("continued")
                second.cancel_scope.cancel()
            keeper.cancel_scope.cancel()
