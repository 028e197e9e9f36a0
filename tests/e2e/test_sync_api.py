"""pio_remote.sync: the blocking API, from plain threads and from inside a running
asyncio loop (a notebook's), against a real relay and agent."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import serial
from conftest import PY, Proc
from monitorkit import PTYDEV

from pio_remote.client.api import PortLeasedError
from pio_remote.sync import connect


@pytest.fixture
def lab(world, tmp_path):
    board = tmp_path / "dev" / "e0"
    board.parent.mkdir()
    home = world.machine("lab", "alice")
    (home.home / "agent.toml").write_text(
        f'port_glob = "{board.parent}/*"\n'
        f'[[uploader]]\nports = "{board.parent}/*"\ncommand = "{PY} -c pass $SOURCE"\n'
    )
    dev = Proc([PY, PTYDEV, "echo", str(board)], home.env)
    world.procs.append(dev)
    dev.wait_for("ptydev")
    world.start_agent(home, "lab")
    ci = world.machine("ci", "alice")
    world.pair(home, ci, "lab")
    args = (world.relay.url, world.account("alice"))
    return args, home.home, ci.home, str(board)


def test_blocking_calls_from_several_threads_and_with_blocks(lab, tmp_path):
    (relay, token), owner_home, ci_home, board = lab
    image = tmp_path / "fw.bin"
    image.write_bytes(b"sync" * 100)
    callers: set[int] = set()
    with connect(relay, token, ci_home) as remote, remote.session("lab") as sess:
        assert [a.agent for a in remote.agents()] == ["alice/lab"]

        def listed(_: int) -> list[str]:
            callers.add(threading.get_ident())
            return [p.port for p in sess.ports()]

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(listed, range(32)))
        assert len(callers) > 1 and all(board in r for r in results)
        with sess.lock(board, ttl=120) as lease:
            # Another client (the owner's key) is kept off while the block runs.
            with connect(relay, token, owner_home) as other, other.session("lab") as theirs:
                with pytest.raises(PortLeasedError):
                    theirs.upload(image, board)
            first = sess.upload(image, board, skip_unchanged=True)
            assert not first.skipped and sess.upload(image, board, skip_unchanged=True).skipped
            with sess.forward_serial(board) as url:
                with serial.serial_for_url(url, baudrate=115200, timeout=10) as ser:
                    ser.write(b"hello\n")
                    assert ser.read_until(b"\n") == b"hello\n"
        assert lease.port == board and all(p.lease is None for p in sess.ports() if p.port == board)


def test_works_inside_a_running_asyncio_loop_like_a_notebook(lab):
    (relay, token), _, ci_home, board = lab

    async def cell() -> list[str]:
        with connect(relay, token, ci_home) as remote, remote.session("lab") as sess:
            with sess.monitor(board) as mon:
                mon.send(b"from a notebook\n")
                got = b""
                while b"\n" not in got:
                    item = mon.receive()
                    if isinstance(item, bytes):
                        got += item
                assert got == b"from a notebook\n"
            return [p.port for p in sess.ports()]

    assert board in asyncio.run(asyncio.wait_for(cell(), 60))
