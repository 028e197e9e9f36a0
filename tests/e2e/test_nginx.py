"""docs/self-hosting.md's nginx config, run by a real nginx: TLS on loopback in front of
the relay, with an agent and a client going through it and a 4 MiB upload arriving
intact. The config is read from the doc, so the two cannot drift apart."""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import shutil
import socket
import sys
from pathlib import Path

import pytest
import trustme
from conftest import ROOT, Proc

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt install nginx)")

HASHER = (
    "import hashlib, sys; "
    "print('sha256', hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest())"
)


def documented_config() -> str:
    text = (ROOT / "docs" / "self-hosting.md").read_text()
    blocks = re.findall(r"```nginx\n(.*?)```", text, re.DOTALL)
    assert len(blocks) == 1, "docs/self-hosting.md should hold exactly one nginx block"
    return blocks[0]


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the documented config no longer has {old!r}"
    return text.replace(old, new)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nginx_conf(tmp: Path, port: int, relay_port: int, cert: Path, key: Path) -> str:
    site = documented_config()
    site = _replace_once(site, "listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    site = _replace_once(site, "/etc/letsencrypt/live/relay.example.com/fullchain.pem", str(cert))
    site = _replace_once(site, "/etc/letsencrypt/live/relay.example.com/privkey.pem", str(key))
    site = _replace_once(site, "http://127.0.0.1:8765;", f"http://127.0.0.1:{relay_port};")
    temp = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                          "uwsgi", "scgi")
    )  # fmt: skip
    user = f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {tmp}/nginx.pid;\n"
        "error_log stderr notice;\nevents { worker_connections 64; }\n"
        f"http {{\n    access_log {tmp}/access.log;\n{temp}\n{site}\n}}\n"
    )


@pytest.fixture
def proxy(world, tmp_path):
    """nginx on a loopback port, TLS with a test CA, in front of the world's relay."""
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    for i, blob in enumerate(leaf.cert_chain_pems):
        blob.write_to_path(str(cert), append=i > 0)
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    port = _free_port()
    conf = nginx_dir / "nginx.conf"
    conf.write_text(nginx_conf(nginx_dir, port, world.relay.port, cert, key))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    check = Proc(["sh", "-c", f"exec {NGINX} -t -p {nginx_dir} -e stderr -c {conf} 2>&1"], env)
    check.wait_for("test is successful")
    nginx = Proc(["sh", "-c", f"exec {NGINX} -p {nginx_dir} -e stderr -c {conf} 2>&1"], env)
    world.procs.append(nginx)
    nginx.wait_for("start worker process")
    return f"wss://localhost:{port}", ca_file


def test_agent_and_client_through_nginx_and_a_4_mib_upload_arrives_intact(world, proxy, tmp_path):
    url, ca_file = proxy
    world.board(tmp_path / "vb" / "b0")
    pi = world.machine("pi", "ann")
    desk = world.machine("desk", "ann")
    for machine in (pi, desk):
        machine.extra.update(PIO_REMOTE_RELAY=url, SSL_CERT_FILE=str(ca_file))
    (pi.home / "agent.toml").write_text(
        f'[[uploader]]\nports = "{tmp_path}/vb/*"\n'
        f'command = "{sys.executable} -c \\"{HASHER}\\" $SOURCE"\n'
    )
    world.start_agent(pi, "lab", "--port-glob", str(tmp_path / "vb" / "*"))
    world.pair(pi, desk, "lab")
    assert "lab" in desk.cli("agent", "list").stdout

    firmware = tmp_path / "firmware.bin"
    firmware.write_bytes(os.urandom(4 * 1024 * 1024))
    result = desk.cli(
        "-a", "lab", "run", "-t", "upload", "--firmware", str(firmware),
        "--upload-port", str(tmp_path / "vb" / "b0"), timeout=120,
    )  # fmt: skip
    digest = hashlib.sha256(firmware.read_bytes()).hexdigest()
    assert f"sha256 {digest}" in result.stdout, result.stdout + result.stderr
    # The client's connections really went through nginx, upgraded to WebSocket.
    access = (tmp_path / "nginx" / "access.log").read_text()
    assert re.search(r'"GET /v1/client HTTP/1.1" 101 ', access), access
