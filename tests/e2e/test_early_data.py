"""Noise message 1 sent with OPEN can be replayed by the relay; a replay changes nothing.

The client sends message 1 before the relay has confirmed the agent (issue 17),
so the relay sees it, and could always send it again. Message 1 carries only
the client's version and host name, never a call: a replayed one gets the
agent's message 2, which only the real client can read, and the recorded call
that followed it no longer decrypts. Here the "relay" is a second connection
with the same account's token, which is all a relay operator would need.
"""

from __future__ import annotations

from pathlib import Path

import trio
from conftest import PY

from pio_remote.client.api import Client
from pio_remote.net import link
from pio_remote.wire import envelope
from pio_remote.wire.envelope import Frame, FrameType


async def test_a_replayed_message_1_and_call_take_no_lease(world, tmp_path: Path, monkeypatch):
    board = tmp_path / "board0"
    ptydev = Path(__file__).with_name("ptydev.py")
    pty = world.spawn([PY, str(ptydev), "echo", str(board)], {})
    pty.wait_for("ptydev echo")
    lab = world.machine("lab", "alice")
    world.start_agent(lab, "lab-pi", "--port-glob", str(board))
    desk = world.machine("desk", "alice")
    world.pair(lab, desk, "lab-pi")
    token = world.tokens["alice"]

    # What the relay sees of an honest session: message 1 right behind OPEN, then a
    # call that takes a lease (which the client then gives back).
    seen: list[bytes] = []
    real_send = link.Link.send

    async def recording_send(self: link.Link, frame: bytes) -> None:
        seen.append(frame)
        await real_send(self, frame)

    monkeypatch.setattr(link.Link, "send", recording_send)
    async with (
        Client.connect(world.relay.url, token, home_path=desk.home) as client,
        client.session("lab-pi") as agent,
    ):
        await agent.call("device.lock", port=str(board), ttl=60)
        held = {d["port"]: d for d in await agent.call("device.list")}
        await agent.call("device.unlock", port=str(board))
    assert held[str(board)].get("lease"), "device.list shows no lease: nothing to look for"
    monkeypatch.setattr(link.Link, "send", real_send)
    frames = [envelope.decode(f) for f in seen]
    opened = next(f for f in frames if f.type is FrameType.OPEN)
    data = [f.payload for f in frames if f.type is FrameType.DATA and f.channel == opened.channel]
    message_1, lock_call = data[0], data[1]
    assert frames.index(opened) + 1 == frames.index(
        next(f for f in frames if f.type is FrameType.DATA)
    ), "message 1 did not follow OPEN at once"

    # The replay: the same message 1, then the recorded lock call.
    async with link.connect(world.relay.url, token, {"role": "client"}) as relay_side:
        got: list[Frame] = []
        closed = trio.Event()

        def on_frame(frame: Frame) -> None:
            got.append(frame)
            if frame.type is FrameType.CLOSE:
                closed.set()

        channel, _ = await relay_side.open_channel("lab-pi", on_frame, first=message_1)
        await relay_side.send_data(channel, lock_call)
        with trio.fail_after(10):
            await closed.wait()  # the agent ends the session: the call fails authentication
    answers = [f for f in got if f.type is FrameType.DATA]
    # Message 2, or nothing when the bad call was already queued as the session began.
    assert len(answers) <= 1, f"the agent said more than its message 2: {got}"

    # Nothing changed on the agent: no lease on the board.
    async with (
        Client.connect(world.relay.url, token, home_path=desk.home) as client,
        client.session("lab-pi") as agent,
    ):
        ports = {d["port"]: d for d in await agent.call("device.list")}
    assert not ports[str(board)].get("lease"), ports[str(board)]
