"""The single-file build from zipapp.spec runs an agent with nothing but a Python."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, Proc


def test_zipapp_agent_serves_a_client(world, tmp_path):
    pyz = tmp_path / "pio-remote.pyz"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build-zipapp"), "--output", str(pyz)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    world.board(tmp_path / "vb" / "b0")
    desk = world.machine("desk", "zed")
    agent_home = tmp_path / "pi-home"
    agent_home.mkdir()
    # A bare environment: no venv, no PYTHONPATH; shiv unpacks into SHIV_ROOT.
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "SHIV_ROOT": str(tmp_path / "shiv"),
        "PIO_REMOTE_HOME": str(agent_home),
        "PIO_REMOTE_RELAY": world.relay.url,
        "PIO_REMOTE_AUTH_TOKEN": world.account("zed"),
    }
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    agent = Proc(
        [python, str(pyz), "agent", "start", "-n", "pi", "--port-glob", str(tmp_path / "vb" / "*")],
        env,
    )
    world.procs.append(agent)
    agent.wait_for(r"agent zed/pi online", timeout=60)
    invite = subprocess.run(
        [python, str(pyz), "agent", "invite", "-n", "pi"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    desk.cli("agent", "pair", invite)
    devices = json.loads(desk.cli("-a", "pi", "device", "list", "--json-output").stdout)
    assert str(tmp_path / "vb" / "b0") in [d["port"] for d in devices["pi"]]
