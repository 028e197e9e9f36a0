"""HAProxy with the documented config (docs/haproxy.cfg) in front of relay nodes.

Only the lines of the file marked ``# test:`` change: the listen address
becomes a loopback port, and the node lines name the test's nodes. A stats
socket is added so the test can read each server's state.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "docs" / "haproxy.cfg"
START_TIMEOUT_S = 10.0
HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def render(nodes: dict[str, int], port: int, stats: Path) -> str:
    """docs/haproxy.cfg with the test's listen port and nodes."""
    out = []
    for line in CONFIG.read_text().splitlines():
        code, _, note = line.partition("# test:")
        if not note:
            out.append(line)
            if line.strip() == "global":
                out.append(f"    stats socket {stats} mode 600 level admin")
        elif note.strip() == "maxconn":
            out.append("    maxconn 4000")  # the test machine's descriptor limit
        elif note.strip() == "listen address":
            out.append(f"    bind 127.0.0.1:{port}")
        elif code.strip().startswith("server n1"):
            out += [f"    server {n} 127.0.0.1:{p} check" for n, p in nodes.items()]
        elif code.strip().startswith("use-server n1"):
            out += [f"    use-server {n} if {{ urlp(node) -m str {n} }}" for n in nodes]
    return "\n".join(out) + "\n"


class HAProxy:
    """A foreground haproxy; ``lines`` collects what it prints (server up/down)."""

    def __init__(self, tmp: Path, nodes: dict[str, int]) -> None:
        assert HAPROXY is not None
        self.port = free_port()
        self.stats = tmp / "haproxy.sock"
        self.cfg = tmp / "haproxy.cfg"
        self.cfg.write_text(render(nodes, self.port, self.stats))
        self.url = f"ws://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(self.cfg)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Until the port accepts and the stats socket answers (HAProxy prints no banner)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("haproxy exited: " + "\n".join(self.lines))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                self.servers_up()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("haproxy did not start: " + "\n".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def servers_up(self) -> dict[str, bool]:
        """Each server's state as HAProxy sees it (stats socket)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.stats))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        states = {}
        for row in data.decode().splitlines():
            cols = row.split(",")
            if (
                len(cols) > 17
                and cols[0] == "relay_nodes"
                and cols[1] not in ("BACKEND", "FRONTEND")
            ):
                states[cols[1]] = cols[17].startswith("UP")
        return states

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
