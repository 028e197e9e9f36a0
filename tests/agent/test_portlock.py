"""Port ownership: one monitor per port; uploads pause and resume the monitor."""

import pytest
import trio

from pio_remote.agent.serial.portlock import PortBusy, PortRegistry


async def test_second_monitor_is_refused_with_the_holder_named():
    ports = PortRegistry()
    async with ports.monitor("/dev/ttyACM0", "alice@desk"):
        with pytest.raises(PortBusy, match="alice@desk"):
            async with ports.monitor("/dev/ttyACM0", "bob@ci"):
                pass
    async with ports.monitor("/dev/ttyACM0", "bob@ci"):  # free again afterwards
        assert ports.holders() == {"/dev/ttyACM0": "bob@ci"}
    assert ports.holders() == {}


async def test_upload_pauses_monitor_then_resumes_it():
    ports = PortRegistry()
    log = []

    async def monitor(task_status=trio.TASK_STATUS_IGNORED):
        async with ports.monitor("p", "viewer") as lease:
            task_status.started()
            await lease.pause_requested.wait()
            log.append("port closed")
            lease.paused()
            await lease.resumed()
            log.append("port reopened")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(monitor)
            async with ports.exclusive("p", "upload"):
                log.append("flashing")
                with pytest.raises(PortBusy, match="is in use: upload$"):
                    async with ports.exclusive("p", "another upload"):
                        pass
    assert log == ["port closed", "flashing", "port reopened"]


async def test_monitor_that_never_pauses_blocks_upload_with_clear_error(autojump_clock):
    ports = PortRegistry()
    async with ports.monitor("p", "stuck viewer"):
        with pytest.raises(PortBusy, match="did not pause"):
            async with ports.exclusive("p", "upload"):
                pass


async def test_monitor_cannot_start_during_upload():
    ports = PortRegistry()
    async with ports.exclusive("p", "upload by ci"):
        with pytest.raises(PortBusy, match="upload by ci"):
            async with ports.monitor("p", "viewer"):
                pass
