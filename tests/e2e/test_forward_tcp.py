"""`device forward --tcp`: real sockets through relay, agent and client processes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
from pathlib import Path

import psutil
import pytest
import trio
from conftest import PY, Env, Proc
from forwardkit import TcpServer, closed_by_peer, connect, make_forward_lab, recv_exactly
from monitorkit import PTYDEV

from pio_remote.client.api import Client, RemoteError
from pio_remote.vboard import FIRMWARE_DEBUG, FIRMWARE_V1, BoardFarm

MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def elf_symbol(path: Path, name: str) -> int:
    """A function's address from an ELF32 LE symbol table (Thumb bit cleared), read by hand
    so the check does not depend on gdb reading the same file."""
    data = path.read_bytes()
    (shoff,) = struct.unpack_from("<I", data, 0x20)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x2E)
    sections = [
        struct.unpack_from("<IIIIIIIIII", data, shoff + i * shentsize) for i in range(shnum)
    ]
    for sh in sections:
        if sh[1] == 2:  # SHT_SYMTAB; sh_link is its string table
            strtab = sections[sh[6]]
            for off in range(sh[4], sh[4] + sh[5], 16):
                st_name, st_value = struct.unpack_from("<II", data, off)
                start = strtab[4] + st_name
                if data[start : data.index(b"\0", start)] == name.encode():
                    return st_value & ~1
    raise AssertionError(f"{path} has no symbol {name}: build it unstripped")


def test_16_mib_arrive_intact_on_several_connections_at_once(world):
    server = TcpServer("echo")
    lab = make_forward_lab(world, f'[[forward]]\nallow = ["{server.address}"]\n')
    try:
        _, port = lab.forward(server.address)
        payloads = [os.urandom(16 * MiB), os.urandom(MiB), os.urandom(MiB)]
        results: list[bytes | None] = [None] * len(payloads)

        def one(i: int) -> None:
            with connect(port, timeout=60) as sock:
                sender = threading.Thread(target=sock.sendall, args=(payloads[i],))
                sender.start()
                results[i] = recv_exactly(sock, len(payloads[i]))
                sender.join()
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(1) == b"", "the echo's end-of-file came through as EOF"

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(payloads))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for sent, got in zip(payloads, results, strict=True):
            assert got is not None and hashlib.sha256(got).digest() == hashlib.sha256(sent).digest()
        server.wait(accepted=3, ended=3)
    finally:
        server.close()


def test_a_reader_that_stops_stops_the_sender_and_memory_stays_bounded(world):
    server = TcpServer("echo")
    lab = make_forward_lab(world, f'[[forward]]\nallow = ["{server.address}"]\n')
    try:
        _, port = lab.forward(server.address)
        agent = psutil.Process(lab.agent.popen.pid)
        relay = psutil.Process(world.relay.proc.popen.pid)
        with connect(port) as warm:  # first-use allocations are not growth
            warm.sendall(b"x" * MiB)
            recv_exactly(warm, MiB)
        before = agent.memory_info().rss, relay.memory_info().rss
        block = os.urandom(MiB)
        pushed = 0
        with connect(port) as sock:
            sock.settimeout(3.0)  # no progress for this long: the whole path is full
            try:
                while pushed < 256 * MiB:
                    sock.sendall(block)
                    pushed += len(block)
            except TimeoutError:
                pass
            after = agent.memory_info().rss, relay.memory_info().rss
            assert pushed < 64 * MiB, f"{pushed / MiB:.0f} MiB went in while nobody read"
            for name, b, a in zip(("agent", "relay"), before, after, strict=True):
                assert a - b < 32 * MiB, f"{name} RSS grew {(a - b) / MiB:.1f} MiB"
            # Reading again resumes the flow: what went in comes back, in order.
            sock.settimeout(30)
            got = recv_exactly(sock, MiB)
            assert got == block
    finally:
        server.close()


def test_a_destination_not_in_agent_toml_is_refused_and_never_connected(world, tmp_path):
    allowed = TcpServer("echo")
    other = TcpServer("hold")
    lab = make_forward_lab(world, f'[[forward]]\nallow = ["{allowed.address}"]\n')
    try:
        refused = lab.env.cli(
            "-a",
            "lab-pi",
            "device",
            "forward",
            "--tcp",
            other.address,
            "--listen",
            "127.0.0.1:0",
            check=False,
        )
        assert refused.returncode == 1, refused
        assert "[[forward]] allow" in refused.stderr and "agent.toml" in refused.stderr
        assert allowed.address in refused.stderr  # what is allowed, so the user can pick
        assert "Traceback" not in refused.stderr

        async def ask_directly() -> RemoteError:
            # A client that skips the CLI's check meets the agent's own refusal.
            relay, token = lab.env.extra["PIO_REMOTE_RELAY"], lab.env.extra["PIO_REMOTE_AUTH_TOKEN"]
            async with Client.connect(relay, token, lab.env.home) as client:
                async with client.session("lab-pi") as agent:
                    with pytest.raises(RemoteError) as info:
                        await agent.call("forward.tcp", target=other.address)
            return info.value

        error = trio.run(ask_directly)
        assert error.code == "forward_refused"
        assert "[[forward]] allow" in str(error) and other.address in str(error)
        other.listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            other.listener.accept()  # nothing ever connected to it
        assert other.accepted == []
    finally:
        allowed.close()
        other.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_closing_the_forward_closes_local_and_agent_side_sockets(world, sig):
    server = TcpServer("hold")
    lab = make_forward_lab(world, f'[[forward]]\nallow = ["{server.address}"]\n')
    try:
        proc, port = lab.forward(server.address)
        socks = [connect(port), connect(port)]
        for s in socks:
            s.sendall(b"hello")
        server.wait(accepted=2)
        proc.popen.send_signal(sig)  # Ctrl+C, or a service manager stopping it
        assert proc.popen.wait(10) == (130 if sig == signal.SIGINT else 0)
        for s in socks:
            assert closed_by_peer(s), "local connection left open after the forward stopped"
            s.close()
        server.wait(ended=2)  # the agent closed its sockets too
        with pytest.raises(ConnectionRefusedError):
            connect(port)
    finally:
        server.close()


def test_server_going_away_closes_the_local_connection(world):
    server = TcpServer("hold")
    lab = make_forward_lab(world, f'[[forward]]\nallow = ["{server.address}"]\n')
    try:
        proc, port = lab.forward(server.address)
        with connect(port) as sock:
            sock.sendall(b"hi")
            server.wait(accepted=1)
            server.drop(0)  # the GDB server exits
            assert closed_by_peer(sock)
        server.close()  # now nothing listens there: a new connection is refused and closed
        with connect(port) as sock:
            assert closed_by_peer(sock)
        assert proc.popen.poll() is None, "the forward keeps serving after one failure"
    finally:
        server.close()


def test_a_local_reset_cancels_the_call_and_closes_the_agent_side(world):
    server = TcpServer("hold")
    lab = make_forward_lab(world, f'[[forward]]\nallow = ["{server.address}"]\n')
    try:
        _, port = lab.forward(server.address)
        sock = connect(port)
        sock.sendall(b"x")
        server.wait(accepted=1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # RST
        server.wait(ended=1)
    finally:
        server.close()


def test_forward_leases_the_boards_port_while_a_connection_is_open(world, tmp_path):
    server = TcpServer("hold")
    dev = tmp_path / "dev"
    dev.mkdir()
    board = dev / "board"
    pty = Proc([PY, PTYDEV, "echo", str(board)], Env(tmp_path).env)
    world.procs.append(pty)
    pty.wait_for("ptydev")
    toml = f'[[forward]]\nallow = ["{server.address}"]\nport = "{board}"\n'
    lab = make_forward_lab(world, toml, "--port-glob", str(dev / "*"))
    try:
        listing = json.loads(lab.env.cli("device", "list", "--json-output").stdout)
        entries = listing["lab-pi"]
        ports = [e for e in entries if "forward" not in e]
        mine = [e for e in ports if e["port"] == str(board)]
        assert len(mine) == 1 and set(mine[0]) == {"port", "description", "hwid"}
        assert [e for e in entries if "forward" in e] == [
            {
                "port": server.address,
                "description": f"TCP forward: pio-remote device forward --tcp {server.address}",
                "hwid": "forward",
                "forward": server.address,
                "lease_port": str(board),
            }
        ]
        text = lab.env.cli("device", "list").stdout
        assert "Agent lab-pi: device forward --tcp" in text
        assert server.address in text and str(board) in text
        _, port = lab.forward(server.address)
        with connect(port) as first, connect(port) as second:
            first.sendall(b"a")
            second.sendall(b"b")
            server.wait(accepted=2)
            busy = lab.env.cli(
                "-a", "lab-pi", "device", "monitor", "-p", str(board), check=False, input=""
            )
            assert busy.returncode == 1
            assert "debug session through" in busy.stderr, busy.stderr
            for sock in (first, second):
                sock.shutdown(socket.SHUT_WR)  # gdb detaches; the server then closes
                assert closed_by_peer(sock)  # the call ended (with its lease)
        server.wait(ended=2)
        # The last connection gave the lease back: the port opens again.
        free = lab.env.cli(
            "-a",
            "lab-pi",
            "device",
            "monitor",
            "-p",
            str(board),
            "--eof-linger",
            "0.2",
            input="ping\n",
        )
        assert "ping" in free.stdout
    finally:
        server.close()


GDB = shutil.which("gdb-multiarch")


@pytest.mark.skipif(
    GDB is None, reason="gdb-multiarch not installed (apt-get install gdb-multiarch)"
)
@pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm not installed")
def test_gdb_reads_the_pc_and_breaks_at_main_through_the_forward(world, tmp_path):
    """docs/debugging.md's recipe: upload the debug build, forward the stub, run gdb."""
    gdb_port = free_port()
    with BoardFarm(tmp_path / "vb", 1, FIRMWARE_V1, gdb_port=gdb_port, gdb_wait=True) as farm:
        stub = f"127.0.0.1:{gdb_port}"
        toml = (
            f'port_glob = ["{tmp_path}/vb/board*"]\n'
            f'[[uploader]]\nports = "{tmp_path}/vb/*"\n'
            f'command = "{PY} -m pio_remote.vboard upload $UPLOAD_PORT $SOURCE"\n'
            f'[[forward]]\nallow = ["{stub}"]\nport = "{farm.port(0)}"\n'
        )
        lab = make_forward_lab(world, toml)
        upload = lab.env.cli(
            "-a",
            "lab-pi",
            "run",
            "-t",
            "upload",
            "--firmware",
            str(FIRMWARE_DEBUG),
            "--upload-port",
            farm.port(0),
        )
        assert "Uploading blink-debug.elf" in upload.stdout, upload.stdout
        debug_sha = hashlib.sha256(FIRMWARE_DEBUG.read_bytes()).hexdigest()
        assert farm.state(0)["firmware_sha256"] == debug_sha
        _, port = lab.forward(stub)
        result = subprocess.run(
            [
                GDB,
                "-batch",
                "-nx",
                str(FIRMWARE_DEBUG),
                "-ex",
                f"target remote 127.0.0.1:{port}",
                "-ex",
                'printf "pc=%#x\\n", $pc',
                "-ex",
                "break main",
                "-ex",
                "continue",
                "-ex",
                'printf "stopped pc=%#x\\n", $pc',
                "-ex",
                "info symbol $pc",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        out = result.stdout + result.stderr
        assert result.returncode == 0, out
        reset = elf_symbol(FIRMWARE_DEBUG, "reset_handler")
        main = elf_symbol(FIRMWARE_DEBUG, "main")
        # Held at reset (QEMU -S): the PC is the reset vector's handler.
        assert f"pc={reset:#x}" in out, out
        assert "Breakpoint 1, main ()" in out, out
        assert f"stopped pc={main:#x}" in out, out
        assert "main in section .text" in out, out


def test_the_forward_outlives_an_agent_restart(world):
    server = TcpServer("echo")
    lab = make_forward_lab(world, f'[[forward]]\nallow = ["{server.address}"]\n')
    try:
        proc, port = lab.forward(server.address)
        with connect(port) as sock:
            sock.sendall(b"one")
            assert recv_exactly(sock, 3) == b"one"
            lab.agent.stop()  # the session ends under an open connection
            assert closed_by_peer(sock)
        with connect(port) as sock:  # agent offline: closed, the forward says why
            assert closed_by_peer(sock)
        lab.agent = world.start_agent(lab.env, "lab-pi")
        with connect(port) as sock:  # a new session, opened for the new connection
            sock.sendall(b"two")
            assert recv_exactly(sock, 3) == b"two"
        assert proc.popen.poll() is None
        taken = lab.env.cli(
            "-a",
            "lab-pi",
            "device",
            "forward",
            "--tcp",
            server.address,
            "--listen",
            f"127.0.0.1:{port}",
            check=False,
        )
        assert taken.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr
    finally:
        server.close()


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--tcp", "3333"], "is not HOST:PORT"),
        (["--tcp", "127.0.0.1:3333", "--listen", "127.0.0.1:x"], "expected HOST:PORT"),
        (["--tcp", "127.0.0.1:3333", "-p", "/dev/ttyACM0"], "give one"),
    ],
)
def test_bad_forward_options_are_usage_errors(world, args, problem):
    env = world.machine("desk", "alice")
    result = env.cli("-a", "lab-pi", "device", "forward", *args, check=False)
    assert result.returncode == 2, result
    assert problem in result.stderr and "Traceback" not in result.stderr
