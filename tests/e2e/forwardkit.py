"""Helpers for `device forward --tcp` tests: an agent with [[forward]] rules, TCP servers."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

from conftest import PY, Env, Proc, World

WAIT = 10.0


class TcpServer:
    """A server on the agent's side, in a thread: ``echo`` or ``hold`` each connection.

    It records every accepted connection and when each one saw end-of-file (or a
    reset), so a test can wait on those events instead of sleeping.
    """

    def __init__(self, mode: str = "echo") -> None:
        self.mode = mode
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.ended = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._cond:
                self.accepted.append(conn)
                self._cond.notify_all()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while chunk := conn.recv(256 * 1024):
                if self.mode == "echo":
                    conn.sendall(chunk)
        except OSError:
            pass
        conn.close()  # the client is done: so is this server
        with self._cond:
            self.ended += 1
            self._cond.notify_all()

    def wait(self, accepted: int = 0, ended: int = 0, timeout: float = WAIT) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: len(self.accepted) >= accepted and self.ended >= ended, timeout
            )
        assert ok, f"server: {len(self.accepted)} accepted, {self.ended} ended; wanted more"

    def drop(self, index: int) -> None:
        """Close one accepted connection now, as a server that exits does (FIN at once).

        ``shutdown`` first: a plain ``close`` while the serving thread sits in
        ``recv`` on it would send nothing until that ``recv`` returns.
        """
        conn = self.accepted[index]
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.close()

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.listener.close()
        for i in range(len(self.accepted)):
            self.drop(i)


@dataclass
class ForwardLab:
    world: World
    env: Env
    agent: Proc
    forwards: list[Proc] = field(default_factory=list)

    def forward(self, target: str, *extra: str) -> tuple[Proc, int]:
        """A running `device forward --tcp TARGET` on a free loopback port."""
        proc = Proc(
            [
                PY,
                "-m",
                "pio_remote",
                "-a",
                "lab-pi",
                "device",
                "forward",
                "--tcp",
                target,
                "--listen",
                "127.0.0.1:0",
                *extra,
            ],
            self.env.env,
        )
        self.world.procs.append(proc)
        self.forwards.append(proc)
        port = int(proc.wait_for(r"Forwarding 127\.0\.0\.1:(\d+) to ").group(1))
        return proc, port


def make_forward_lab(
    world: World, agent_toml: str, *agent_args: str, label: str = "lab"
) -> ForwardLab:
    """alice's agent 'lab-pi' with ``agent_toml``; the desk is its own machine (no pairing)."""
    env = world.machine(label, "alice")
    (env.home / "agent.toml").write_text(agent_toml)
    agent = world.start_agent(env, "lab-pi", *agent_args)
    return ForwardLab(world, env, agent)


def connect(port: int, timeout: float = WAIT) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(min(size - len(buf), 1 << 20))
        if not chunk:
            raise AssertionError(f"connection closed after {len(buf)} of {size} bytes")
        buf += chunk
    return bytes(buf)


def closed_by_peer(sock: socket.socket, timeout: float = WAIT) -> bool:
    """True if the peer ends the connection (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True
