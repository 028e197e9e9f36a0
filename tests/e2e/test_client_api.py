"""The client library on its own, under trio and under anyio's trio backend."""

import anyio
import pytest
import trio

from pio_remote.client.api import Client, RemoteError, wait_result


@pytest.fixture
def solo(world, tmp_path):
    world.board(tmp_path / "vb" / "b0")
    machine = world.machine("solo", "erin")
    world.start_agent(machine, "bench", "--port-glob", str(tmp_path / "vb" / "*"))
    return world, machine, tmp_path / "vb" / "b0"


async def _exercise(world, machine, board):
    async with Client.connect(world.relay.url, world.account("erin"), machine.home) as client:
        assert client.account == "erin"
        [info] = await client.list_agents()
        assert info.agent == "erin/bench" and not info.shared
        async with client.session("bench") as agent:
            ports = await agent.call("device.list")
            assert str(board) in [p["port"] for p in ports]
            with pytest.raises(RemoteError) as err:
                await agent.call("no.such.method")
            assert err.value.code == "unknown_method"
            # A streaming call: 3 MiB through the echo, more than the credit window,
            # so this only finishes if credit flows back.
            payload = bytes(range(256)) * (3 * 4096)
            got = bytearray()
            async with agent.open_call("diag.echo") as call:
                async with trio.open_nursery() as nursery:

                    async def sender():
                        await call.send(payload)
                        await call.send_eof()

                    nursery.start_soon(sender)
                    while len(got) < len(payload):
                        item = await call.receive()
                        assert isinstance(item, bytes)
                        got += item
                assert await wait_result(call) == len(payload)
            assert bytes(got) == payload
        results = await client.fan_out(["bench", "nobody"], "device.list", timeout=5)
        assert isinstance(results["nobody"], RemoteError)
        assert str(board) in [p["port"] for p in results["erin/bench"]]


async def test_client_library_under_trio(solo):
    with trio.fail_after(30):
        await _exercise(*solo)


def test_client_library_under_anyio_trio_backend(solo):
    anyio.run(_exercise, *solo, backend="trio")
