"""Each way of failing to reach a relay gets its own one-line error, quickly, through the CLI.

Real servers on 127.0.0.1 stand in for each mistake: nothing listening, a TLS
relay reached with ws://, a plain relay reached with wss://, a TLS relay whose
certificate is not trusted, a web server that is not a relay, and a listener
that accepts and never answers.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import Env, World
from proctools import tls_files

from pio_remote.net import wsclient

# Each of these fails well before a connect deadline; the margin covers a slow start.
QUICK_S = wsclient.CONNECT_TIMEOUT - 1


def agent_list(home: Path, relay: str, timeout: float = QUICK_S, **env: str):
    machine = Env(home, {"PIO_REMOTE_RELAY": relay, "PIO_REMOTE_AUTH_TOKEN": "t0ken", **env})
    return machine.cli("agent", "list", check=False, timeout=timeout)


def one_line_error(result, *words: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def tls_world(tmp_path: Path) -> Iterator[tuple[World, Path]]:
    cert, key, ca = tls_files(tmp_path, "127.0.0.1")
    w = World(tmp_path)
    w.relay.start(extra=("--tls-cert", str(cert), "--tls-key", str(key)))
    try:
        yield w, ca
    finally:
        w.close()


class NotARelay(BaseHTTPRequestHandler):
    """A web server answering every request with an HTML page."""

    def do_GET(self) -> None:
        body = b"<html><body><h1>404 Not Found</h1><p>nginx-like page</p></body></html>\n"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class NotARelay11(NotARelay):
    protocol_version = "HTTP/1.1"


@pytest.fixture(params=[NotARelay, NotARelay11], ids=["http1.0", "http1.1"])
def web_server(request) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_refused_port(tmp_path: Path) -> None:
    port = free_port()
    one_line_error(agent_list(tmp_path, f"ws://127.0.0.1:{port}"), "connection refused", str(port))


def test_unknown_host(tmp_path: Path) -> None:
    one_line_error(agent_list(tmp_path, "ws://no-such-host.invalid:8765"), "unknown host")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765", "127.0.0.1:8765", "notaurl"])
def test_bad_url_shows_the_expected_form(tmp_path: Path, url: str) -> None:
    line = one_line_error(agent_list(tmp_path, url), repr(url), "ws://HOST:PORT")
    if url.startswith("http"):
        assert "ws://" in line.split("(", 1)[-1]


def test_not_a_relay_never_prints_its_page(tmp_path: Path, web_server: int) -> None:
    result = agent_list(tmp_path, f"ws://127.0.0.1:{web_server}")
    one_line_error(result, "not a pio-remote relay", "404 Not Found")
    assert "<" not in result.stderr and "nginx" not in result.stderr


def test_wss_to_a_plain_relay(world: World, tmp_path: Path) -> None:
    url = world.relay.url.replace("ws://", "wss://")
    one_line_error(agent_list(tmp_path, url), "TLS handshake", "use ws://")


def test_ws_to_a_tls_relay(tls_world: tuple[World, Path], tmp_path: Path) -> None:
    w, _ = tls_world
    url = w.relay.url.replace("wss://", "ws://")
    one_line_error(agent_list(tmp_path, url), "use wss://")


def test_untrusted_certificate_names_the_ca_problem_and_ssl_cert_file(
    tls_world: tuple[World, Path], tmp_path: Path
) -> None:
    w, ca = tls_world
    line = one_line_error(agent_list(tmp_path, w.relay.url), "not trusted", "SSL_CERT_FILE")
    assert "self-signed" in line or "self signed" in line or "issuer" in line, line
    # With the CA named in SSL_CERT_FILE the same command gets through to the relay,
    # which refuses the made-up token: the TLS part is solved.
    trusted = agent_list(tmp_path, w.relay.url, SSL_CERT_FILE=str(ca))
    one_line_error(trusted, "HTTP 401", "bad token")


def test_a_listener_that_never_answers_fails_at_the_deadline(tmp_path: Path) -> None:
    """The kernel completes the TCP handshake from the backlog; nothing more ever comes."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"ws://127.0.0.1:{silent.getsockname()[1]}"
        result = agent_list(tmp_path, url, timeout=wsclient.CONNECT_TIMEOUT + 15)
    one_line_error(result, "did not answer the WebSocket upgrade within")


def test_a_path_that_drops_mid_upgrade_says_so_without_a_tls_hint(tmp_path: Path) -> None:
    """The listener reads the upgrade request, then resets the connection."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)

        def reset_one() -> None:
            conn, _ = listener.accept()
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # linger 0: a reset, as a dropped path or a crashed peer gives

        thread = threading.Thread(target=reset_one, daemon=True)
        thread.start()
        result = agent_list(tmp_path, f"ws://127.0.0.1:{listener.getsockname()[1]}")
        thread.join(5)
    line = one_line_error(result, "lost the connection", "during the WebSocket upgrade")
    assert "wss://" not in line
