"""The link's channel handlers live and die with their channel; a bad frame ends only its channel.

A scripted relay on 127.0.0.1 (the relay's own WebSocket layer, driven by the
test) sends exactly the awkward sequences: CLOSE right behind OPENED, OPENED
after the client gave up, a frame a channel cannot take, a frame nobody can
decode.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from pio_remote.net import link
from pio_remote.net.wsio import OP_BINARY, FastSocketStream
from pio_remote.relay import http
from pio_remote.relay.websocket import ServerSocket
from pio_remote.wire import envelope
from pio_remote.wire.envelope import Frame, FrameType

KEY = "ab" * 32
Script = Callable[["Peer", Frame], Awaitable[None]]


class Peer:
    """The relay's side of one connection, as the script sees it."""

    def __init__(self, stream: FastSocketStream, ws: ServerSocket) -> None:
        self.stream = stream
        self.ws = ws
        self.got: list[Frame] = []
        self.changed = trio.Event()

    async def send(self, *frames: bytes) -> None:
        """All ``frames`` in one write, so the client reads them in one go."""
        await self.stream.send_all(self.ws.frames(list(frames)))

    async def wait_for(self, ftype: FrameType, channel: int) -> Frame:
        with trio.fail_after(5):
            while True:
                for frame in self.got:
                    if frame.type is ftype and frame.channel == channel:
                        return frame
                self.changed = trio.Event()
                await self.changed.wait()


async def scripted_relay(nursery: trio.Nursery, script: Script) -> tuple[str, list[Peer]]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    peers: list[Peer] = []

    async def handle(tcp: trio.SocketStream) -> None:
        stream = FastSocketStream(tcp)
        ws = ServerSocket(envelope.MAX_FRAME_SIZE)
        request, rest = await http.read_request(stream, ws)
        answer, _ = http.upgrade(ws, request)
        await stream.send_all(answer)
        peer = Peer(stream, ws)
        peers.append(peer)
        reader = http.ReplayStream(stream, rest)  # HELLO comes behind the request head
        while data := await reader.receive_some(65536):
            for opcode, message in ws.feed(data):
                if opcode != OP_BINARY:  # the client's Close: the protocol answered it
                    await stream.send_all(ws.pending())
                    continue
                frame = envelope.decode(message)
                peer.got.append(frame)
                peer.changed.set()
                if frame.type is FrameType.HELLO:
                    welcome = {"version": 1, "account": "alice", "max_frame": 65540}
                    await peer.send(envelope.encode_json(FrameType.WELCOME, 0, welcome))
                elif frame.type is FrameType.LIST:
                    await peer.send(envelope.encode(FrameType.LIST, frame.channel, b"[]"))
                else:
                    await script(peer, frame)

    await nursery.start(trio.serve_listeners, handle, listeners)
    return f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}", peers


def opened(channel: int) -> bytes:
    return envelope.encode_json(FrameType.OPENED, channel, {"agent": "alice/pi", "key": KEY})


class Recorder:
    def __init__(self, fail_on: bytes = b"") -> None:
        self.frames: list[Frame] = []
        self.changed = trio.Event()
        self.fail_on = fail_on

    def __call__(self, frame: Frame) -> None:
        self.frames.append(frame)
        self.changed.set()
        if self.fail_on and frame.payload == self.fail_on:
            raise ValueError("cannot take this frame")

    async def wait_for(self, ftype: FrameType) -> Frame:
        with trio.fail_after(5):
            while True:
                for frame in self.frames:
                    if frame.type is ftype:
                        return frame
                self.changed = trio.Event()
                await self.changed.wait()


async def test_close_right_behind_opened_reaches_the_channel(nursery) -> None:
    async def script(peer: Peer, frame: Frame) -> None:
        if frame.type is FrameType.OPEN:
            gone = envelope.encode(FrameType.CLOSE, frame.channel, b"agent disconnected")
            await peer.send(opened(frame.channel), gone)

    url, _ = await scripted_relay(nursery, script)
    async with link.connect(url, "t", {"role": "client"}) as lnk:
        handler = Recorder()
        channel, info = await lnk.open_channel("pi", handler)
        assert info.agent_id == "alice/pi"
        closed = await handler.wait_for(FrameType.CLOSE)
        assert (closed.channel, closed.payload) == (channel, b"agent disconnected")
        assert await lnk.list_agents() == []  # the link lives on


async def test_opened_after_a_cancelled_open_is_closed_and_the_link_lives(nursery) -> None:
    release = trio.Event()

    async def script(peer: Peer, frame: Frame) -> None:
        if frame.type is FrameType.OPEN:
            await release.wait()
            await peer.send(opened(frame.channel), envelope.encode(FrameType.CLOSE, 99, b""))

    url, peers = await scripted_relay(nursery, script)
    async with link.connect(url, "t", {"role": "client"}) as lnk:
        handler = Recorder()
        with trio.move_on_after(0.2) as gave_up:
            await lnk.open_channel("pi", handler)
        assert gave_up.cancelled_caught
        release.set()
        (peer,) = peers
        # The link answers the late OPENED with CLOSE, and the handler never sees it.
        open_frame = await peer.wait_for(FrameType.OPEN, 1)
        await peer.wait_for(FrameType.CLOSE, open_frame.channel)
        assert handler.frames == []
        assert await lnk.list_agents() == []


async def test_open_timeout_is_a_relay_error_and_leaves_no_handler(nursery) -> None:
    async def script(peer: Peer, frame: Frame) -> None:
        pass  # never answers OPEN

    url, _ = await scripted_relay(nursery, script)
    async with link.connect(url, "t", {"role": "client"}) as lnk:
        with pytest.raises(link.RelayError, match="did not answer"):
            await lnk.open_channel("pi", Recorder(), timeout=0.2)
        assert await lnk.list_agents() == []


async def test_a_frame_one_channel_cannot_take_ends_that_channel_only(nursery) -> None:
    async def script(peer: Peer, frame: Frame) -> None:
        if frame.type is FrameType.OPEN:
            await peer.send(opened(frame.channel))

    url, peers = await scripted_relay(nursery, script)
    async with link.connect(url, "t", {"role": "client"}) as lnk:
        bad, good = Recorder(fail_on=b"poison"), Recorder()
        first, _ = await lnk.open_channel("pi", bad)
        second, _ = await lnk.open_channel("pi", good)
        (peer,) = peers
        await peer.send(
            envelope.encode(FrameType.DATA, first, b"poison"),
            envelope.encode(FrameType.DATA, second, b"fine"),
        )
        closed = await bad.wait_for(FrameType.CLOSE)  # the channel's owner hears of it
        assert b"bad frame" in closed.payload
        await peer.wait_for(FrameType.CLOSE, first)  # and so does the relay
        assert (await good.wait_for(FrameType.DATA)).payload == b"fine"
        await peer.send(envelope.encode(FrameType.DATA, first, b"late"))
        await peer.send(envelope.encode(FrameType.DATA, second, b"still fine"))
        with trio.fail_after(5):
            while len(good.frames) < 2:
                good.changed = trio.Event()
                await good.changed.wait()
        assert good.frames[1].payload == b"still fine"
        assert [f.payload for f in bad.frames if f.type is FrameType.DATA] == [b"poison"]


async def test_a_frame_nobody_can_decode_ends_the_link_with_the_reason(nursery) -> None:
    async def script(peer: Peer, frame: Frame) -> None:
        if frame.type is FrameType.OPEN:
            await peer.send(opened(frame.channel), b"\xee\x00\x00\x00\x01junk")

    url, _ = await scripted_relay(nursery, script)
    handler = Recorder()
    with pytest.raises(link.RelayError, match="malformed frame: unknown frame type 0xee"):
        async with link.connect(url, "t", {"role": "client"}) as lnk:
            await lnk.open_channel("pi", handler)
            await trio.sleep_forever()
    assert (await handler.wait_for(FrameType.CLOSE)).payload == b"relay connection lost"


async def test_an_unasked_list_answer_and_a_stray_opened_are_harmless(nursery) -> None:
    url, peers = await scripted_relay(nursery, lambda peer, frame: trio.lowlevel.checkpoint())
    async with link.connect(url, "t", {"role": "client"}) as lnk:
        await lnk.list_agents()
        (peer,) = peers
        await peer.send(envelope.encode(FrameType.LIST, 12345, b"[]"), opened(777))
        await peer.wait_for(FrameType.CLOSE, 777)  # an OPENED nobody asked for is closed
        assert await lnk.list_agents() == []


class StepCounter(trio.abc.Instrument):
    """Counts task steps, except those of the tasks named in ``ignore``."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.ignore: set[trio.lowlevel.Task] = set()
        self.on = False

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.on and task not in self.ignore:
            self.steps.append(task.name)


def tasks_under(nursery: trio.Nursery) -> set[trio.lowlevel.Task]:
    tasks = set(nursery.child_tasks)
    for task in list(tasks):
        for child in task.child_nurseries:
            tasks |= tasks_under(child)
    return tasks


async def test_a_message_reaches_its_consumer_in_two_scheduler_passes(nursery) -> None:
    """Link reader, then the task that consumes: nothing in between (issue 9, section 5)."""
    from pio_remote.net.channel import Call, SecureChannel
    from pio_remote.wire import e2e, session

    agent_key, client_key = e2e.generate_private_key(), e2e.generate_private_key()
    init = e2e.Initiator(client_key, e2e.public_key(agent_key), e2e.prologue("alice/pi"))
    resp = e2e.Responder(agent_key, e2e.prologue("alice/pi"))
    resp.read_first(e2e.parse_first_message(init.first_message()).noise)
    reply, t_agent = resp.respond()
    _, t_client = init.read_response(reply)

    async def script(peer: Peer, frame: Frame) -> None:
        if frame.type is FrameType.OPEN:
            await peer.send(opened(frame.channel))

    url, peers = await scripted_relay(nursery, script)
    counter = StepCounter()
    async with link.connect(url, "t", {"role": "client"}) as lnk:
        chan = SecureChannel(lnk, 0, t_client, session.Session(session.Role.CLIENT))
        channel, _ = await lnk.open_channel("pi", chan.on_frame)
        chan.channel_id = channel
        call_id, _ = chan.session.start_call("diag.echo", {})
        call = chan.calls[call_id] = Call(chan, call_id, "diag.echo", {})
        agent = session.Session(session.Role.AGENT)
        agent.receive(session.Session(session.Role.CLIENT).start_call("diag.echo", {})[1])
        (peer,) = peers
        for _ in range(20):
            data = t_agent.encrypt(agent.send_data(call_id, b"x" * 64))
            await trio.testing.wait_all_tasks_blocked()
            counter.ignore = tasks_under(nursery)  # the scripted relay's
            counter.steps.clear()
            counter.on = True
            trio.lowlevel.add_instrument(counter)
            try:
                await peer.stream.send_all(
                    peer.ws.frame(envelope.HEADER.pack(FrameType.DATA, channel) + data)
                )
                got = await call.inbox.get()  # this task is the consumer
            finally:
                counter.on = False
                trio.lowlevel.remove_instrument(counter)
            assert got == b"x" * 64
            # This task (sending, then consuming) and the link's reader; nothing else.
            assert sorted(set(counter.steps)) == sorted(
                {trio.lowlevel.current_task().name, "pio_remote.net.link.Link.run_guarded"}
            ), counter.steps
            assert counter.steps.count("pio_remote.net.link.Link.run_guarded") == 1, counter.steps
