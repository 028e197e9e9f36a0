"""The baseline when sshd is unavailable: raw TCP through one forwarding hop, in a child."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness.rig import LOCALHOST, PY, STARTUP_TIMEOUT_S, Proc, child_env

# Modes of the fallback server, sent as the first byte of a connection.
TCP_SINK, TCP_ECHO, TCP_SOURCE = b"s", b"e", b"o"
TCP_BLOCK = 256 * 1024


@dataclass
class TcpBaseline:
    """A forwarder in front of a sink/echo/source server, both in one child process."""

    port: int
    proc: Proc = field(repr=False)

    def connect(self, mode: bytes, arg: int = 0) -> socket.socket:
        sock = socket.create_connection((LOCALHOST, self.port), timeout=STARTUP_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(mode + arg.to_bytes(8, "big"))
        return sock


@contextmanager
def tcp_baseline() -> Iterator[TcpBaseline]:
    """Raw TCP through one forwarding hop: what a relay costs with no crypto and no framing."""
    tmp = Path(tempfile.mkdtemp(prefix="pio-bench-tcp-"))
    env = child_env()  # run as `python -m harness.rawtcp`: the package must be importable
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), env["PYTHONPATH"]]
    )
    proc = Proc([PY, "-m", "harness.rawtcp"], env, tmp / "tcp.log")
    try:
        port = int(proc.wait_for(r"forwarder on (\d+)").group(1))
        yield TcpBaseline(port, proc)
    finally:
        proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def serve_backend(conn: socket.socket) -> None:
    with conn:
        head = recv_exactly(conn, 9)
        mode, arg = head[:1], int.from_bytes(head[1:], "big")
        if mode == TCP_SINK:
            total = 0
            while chunk := conn.recv(TCP_BLOCK):
                total += len(chunk)
            conn.sendall(total.to_bytes(8, "big"))
        elif mode == TCP_ECHO:
            while chunk := conn.recv(TCP_BLOCK):
                conn.sendall(chunk)
        elif mode == TCP_SOURCE:
            block = bytes(TCP_BLOCK)
            view = memoryview(block)
            while arg:
                n = min(arg, TCP_BLOCK)
                conn.sendall(view[:n])
                arg -= n


def recv_exactly(conn: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes from a blocking socket, for the raw TCP baselines."""
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed early")
        data += chunk
    return data


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(TCP_BLOCK):
            dst.sendall(chunk)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _forward(client: socket.socket, backend_port: int) -> None:
    with client, socket.create_connection((LOCALHOST, backend_port)) as backend:
        for sock in (client, backend):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=_pipe, args=(backend, client), daemon=True)
        back.start()
        _pipe(client, backend)
        back.join()


def serve(listener: socket.socket, handler: Callable[..., None], *args: object) -> None:
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handler, args=(conn, *args), daemon=True).start()


def run_tcp_baseline(lifetime: float = 600.0) -> None:
    """Child process body: backend and forwarder threads; exits by itself after ``lifetime``."""
    backend = socket.create_server((LOCALHOST, 0))
    front = socket.create_server((LOCALHOST, 0))
    threading.Thread(target=serve, args=(backend, serve_backend), daemon=True).start()
    threading.Thread(
        target=serve, args=(front, _forward, backend.getsockname()[1]), daemon=True
    ).start()
    print(f"forwarder on {front.getsockname()[1]}", flush=True)
    time.sleep(lifetime)


if __name__ == "__main__":
    run_tcp_baseline()
