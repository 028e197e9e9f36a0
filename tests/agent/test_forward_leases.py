"""A session's forwarded connections share one exclusive lease on the board's port."""

from __future__ import annotations

import pytest
import trio

from pio_remote.agent.forward import SharedLeases
from pio_remote.agent.serial.portlock import PortBusy, PortRegistry


async def test_connections_share_one_lease_released_with_the_last():
    ports = PortRegistry()
    async with trio.open_nursery() as nursery:
        leases = SharedLeases(ports, nursery)
        async with leases.hold("/dev/ttyACM0", "debug by alice"):
            async with leases.hold("/dev/ttyACM0", "debug by alice"):
                assert ports.holders() == {"/dev/ttyACM0": "debug by alice"}
            assert ports.holders() == {"/dev/ttyACM0": "debug by alice"}  # one still open
            with pytest.raises(PortBusy, match="debug by alice"):
                async with ports.exclusive("/dev/ttyACM0", "upload by bob"):
                    pass
        assert ports.holders() == {}  # released before the last connection's call ends
        # A reconnect right after the last close gets the lease again, not PortBusy.
        async with leases.hold("/dev/ttyACM0", "debug by alice"):
            pass
        async with leases.hold("/dev/ttyACM0", "debug by alice"):
            assert ports.holders() == {"/dev/ttyACM0": "debug by alice"}


async def test_a_port_another_session_holds_is_refused():
    ports = PortRegistry()
    async with trio.open_nursery() as nursery:
        alice, bob = SharedLeases(ports, nursery), SharedLeases(ports, nursery)
        async with alice.hold("p", "debug by alice"):
            with pytest.raises(PortBusy, match="debug by alice"):
                async with bob.hold("p", "debug by bob"):
                    pass
        async with bob.hold("p", "debug by bob"):  # free once alice is done
            assert ports.holders() == {"p": "debug by bob"}


async def test_no_port_means_no_lease():
    ports = PortRegistry()
    async with trio.open_nursery() as nursery:
        async with SharedLeases(ports, nursery).hold(None, "x"):
            assert ports.holders() == {}
