"""docs/self-hosting.md's Caddyfile, run by a real Caddy with its own local CA in front
of the relay: an agent and a client go through it. Read from the doc, so they agree."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket

import pytest
from conftest import ROOT, Proc

CADDY = shutil.which("caddy")
pytestmark = pytest.mark.skipif(CADDY is None, reason="caddy is not installed (apt install caddy)")


def documented_caddyfile() -> str:
    text = (ROOT / "docs" / "self-hosting.md").read_text()
    blocks = re.findall(r"```caddy\n(.*?)```", text, re.DOTALL)
    assert len(blocks) == 1, "docs/self-hosting.md should hold exactly one caddy block"
    return blocks[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_agent_and_client_through_caddy(world, tmp_path):
    site = documented_caddyfile()
    https, http = _free_port(), _free_port()
    assert site.count("relay.example.com {") == 1 and site.count("127.0.0.1:8765") == 1
    site = site.replace("relay.example.com {", f"localhost:{https} {{")
    site = site.replace("127.0.0.1:8765", f"127.0.0.1:{world.relay.port}")
    data = tmp_path / "caddy"
    # Test-only globals: no admin endpoint, a private CA kept in tmp, no fixed ports.
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text(
        f"{{\n\tadmin off\n\tstorage file_system {data}\n\tlocal_certs\n\tskip_install_trust\n"
        f"\thttp_port {http}\n\thttps_port {https}\n\tauto_https disable_redirects\n}}\n\n{site}"
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    caddy = Proc(
        ["sh", "-c", f"exec {CADDY} run --adapter caddyfile --config {caddyfile} 2>&1"], env
    )
    world.procs.append(caddy)
    caddy.wait_for(r"certificate obtained successfully.*localhost", timeout=60)
    root_ca = data / "pki" / "authorities" / "local" / "root.crt"
    assert root_ca.exists()

    pi = world.machine("pi", "ann")
    desk = world.machine("desk", "ann")
    for machine in (pi, desk):
        machine.extra.update(
            PIO_REMOTE_RELAY=f"wss://localhost:{https}", SSL_CERT_FILE=str(root_ca)
        )
    world.board(tmp_path / "vb" / "b0")
    world.start_agent(pi, "lab", "--port-glob", str(tmp_path / "vb" / "*"))
    world.pair(pi, desk, "lab")
    devices = json.loads(desk.cli("-a", "lab", "device", "list", "--json-output").stdout)
    assert str(tmp_path / "vb" / "b0") in [d["port"] for d in devices["lab"]]
