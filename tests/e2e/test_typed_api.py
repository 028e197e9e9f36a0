"""AgentSession's typed calls (client/boards.py) against a real relay and agent, in-process:
forwarding serial and TCP, leases as blocks, and the typed errors."""

from __future__ import annotations

import shutil

import pytest
import serial
import trio
from conftest import PY, Proc
from forwardkit import TcpServer, connect, recv_exactly
from monitorkit import PTYDEV

from pio_remote.client.api import Client, PortLeasedError, RemoteError, UnknownPortError
from pio_remote.vboard import FIRMWARE_UNITY_FAIL, FIRMWARE_V1, BoardFarm


class Desk:
    """alice's agent 'lab' with an echo pty board; two paired clients."""

    def __init__(self, world, tmp, server: TcpServer):
        self.world = world
        self.board = tmp / "dev" / "e0"
        self.board.parent.mkdir()
        lab = world.machine("lab", "alice")
        (lab.home / "agent.toml").write_text(
            f'port_glob = "{self.board.parent}/*"\n'
            f'[[forward]]\nallow = ["{server.address}"]\n'
            f'[[uploader]]\nports = "{self.board.parent}/*"\ncommand = "{PY} -c pass $SOURCE"\n'
        )
        dev = Proc([PY, PTYDEV, "echo", str(self.board)], lab.env)
        world.procs.append(dev)
        dev.wait_for("ptydev")
        world.start_agent(lab, "lab")
        self.ci1 = world.machine("ci1", "alice")
        self.ci2 = world.machine("ci2", "alice")
        for ci in (self.ci1, self.ci2):
            world.pair(lab, ci, "lab")

    def connect(self, ci):
        return Client.connect(self.world.relay.url, self.world.account("alice"), ci.home)


@pytest.fixture
def server():
    srv = TcpServer("echo")
    yield srv
    srv.listener.close()


@pytest.fixture
def desk(world, tmp_path, server):
    return Desk(world, tmp_path, server)


def _pyserial_echo(url: str) -> bytes:
    with serial.serial_for_url(url, baudrate=115200, timeout=10) as ser:
        ser.write(b"ping through rfc2217\n")
        return ser.read_until(b"\n")


async def test_forward_serial_yields_a_url_pyserial_opens(desk):
    with trio.fail_after(60):
        async with desk.connect(desk.ci1) as client, client.session("lab") as lab:
            async with lab.forward_serial(str(desk.board)) as url:
                assert url.startswith("rfc2217://127.0.0.1:")
                got = await trio.to_thread.run_sync(_pyserial_echo, url)
                assert got == b"ping through rfc2217\n"
                # Once more: the forward serves one tool after another.
                assert await trio.to_thread.run_sync(_pyserial_echo, url) == got
            with pytest.raises(UnknownPortError) as err:
                async with lab.forward_serial("/dev/nonexistent"):
                    pass
            assert err.value.code == "unknown_port" and str(desk.board) in str(err.value)


def _tcp_echo(port: int) -> bytes:
    with connect(port) as sock:
        sock.sendall(b"x" * 70000)
        return recv_exactly(sock, 70000)


async def test_forward_tcp_carries_connections_to_an_allowed_destination(desk, server):
    with trio.fail_after(60):
        async with desk.connect(desk.ci1) as client, client.session("lab") as lab:
            async with lab.forward_tcp(server.address) as (host, port):
                assert host == "127.0.0.1"
                assert await trio.to_thread.run_sync(_tcp_echo, port) == b"x" * 70000
            with pytest.raises(RemoteError) as err:
                async with lab.forward_tcp("127.0.0.1:1"):
                    pass
            assert err.value.code == "forward_refused"


async def test_lock_blocks_hold_leases_and_errors_are_typed(desk, tmp_path):
    image = tmp_path / "fw.bin"
    image.write_bytes(b"fw" * 64)
    board = str(desk.board)
    with trio.fail_after(120):
        async with (
            desk.connect(desk.ci1) as c1,
            c1.session("lab") as one,
            desk.connect(desk.ci2) as c2,
            c2.session("lab") as two,
        ):
            async with one.lock(board, ttl=300, note="nightly") as lease:
                assert lease.port == board and len(lease.id) == 16
                [port] = [p for p in await two.ports() if p.port == board]
                assert port.lease and port.lease["note"] == "nightly"
                with pytest.raises(PortLeasedError) as err:
                    await two.upload(image, board)
                assert err.value.code == "port_leased" and "nightly" in str(err.value)
                await one.upload(image, board)  # the holder's session may
            # The block released the detached lease: the other client may use it now.
            assert all(p.lease is None for p in await two.ports() if p.port == board)
            async with two.lock(board) as held:  # held while the block runs
                with pytest.raises(PortLeasedError):
                    async with one.lock(board, wait=0.2):
                        pass
                assert held.holder.startswith("alice (client key ")
            await one.upload(image, board)


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm missing")
async def test_run_tests_returns_the_reports_pio_remote_test_writes(world, tmp_path):
    with BoardFarm(tmp_path / "vb", count=1, firmware=FIRMWARE_V1) as farm:
        lab = world.machine("lab", "alice")
        (lab.home / "agent.toml").write_text(
            f'[[uploader]]\nports = "{tmp_path}/vb/board*"\n'
            f'command = "{PY} -m pio_remote.vboard upload $UPLOAD_PORT $SOURCE"\n'
        )
        world.start_agent(lab, "lab", "--port-glob", f"{tmp_path}/vb/board*")
        with trio.fail_after(120):
            async with (
                Client.connect(world.relay.url, world.account("alice"), lab.home) as client,
                client.session("lab") as agent,
            ):
                [report] = await agent.run_tests(FIRMWARE_UNITY_FAIL, farm.port(0), timeout=60)
    assert report.status == "FAILED" and report.port == farm.port(0)
    failed = [(c.name, c.message) for c in report.cases if c.status == "FAILED"]
    assert failed == [("test_sub", "Expected 1 Was 2")]


async def test_a_lock_block_has_released_the_lease_when_it_ends(desk):
    board = str(desk.board)
    with trio.fail_after(120):
        async with (
            desk.connect(desk.ci1) as c1,
            c1.session("lab") as one,
            desk.connect(desk.ci2) as c2,
            c2.session("lab") as two,
        ):
            # The block's end is the lease's: the other client takes it at once, without
            # waiting, turn and turn about.
            for _ in range(10):
                for sess in (one, two):
                    async with sess.lock(board) as lease:
                        assert lease.port == board
