"""Values from a client's platformio.ini never see the agent's environment (issue 8 item 1).

The agent process holds a variable that the client does not have. Neither the
uploader's argv (sent back to the client and logged), nor its output, nor the
agent's log may ever carry its value, whatever the client's file says.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import PY

from pio_remote.client import upload as flash
from pio_remote.client.api import Client, RemoteError
from pio_remote.wire.transfer import FileEntry

SECRET = "agent-only-secret-4711"
ECHO = "import sys; print('uploader got', sys.argv[1:])\n"
AGENT_TOML = """
[[uploader]]
ports = "*.local"
command = "{py} {script} $UPLOAD_SPEED $UPLOAD_FLAGS"
"""


@pytest.fixture
def setup(world, tmp_path):
    lab = world.machine("lab", "alice")
    desk = world.machine("desk", "alice")
    (tmp_path / "echo.py").write_text(ECHO)
    (lab.home / "agent.toml").write_text(AGENT_TOML.format(py=PY, script=tmp_path / "echo.py"))
    lab.extra["AGENT_SECRET"] = SECRET
    agent = world.start_agent(lab, "lab-pi")
    world.pair(lab, desk, "lab-pi")
    project = tmp_path / "proj"
    build = project / ".pio" / "build" / "dev"
    build.mkdir(parents=True)
    (build / "firmware.bin").write_bytes(b"\x01" * 64)
    return world, desk, agent, project


def write_ini(project: Path, options: str) -> None:
    (project / "platformio.ini").write_text(f"[env:dev]\nplatform = ststm32\n{options}")


def test_sysenv_is_resolved_on_the_client_never_on_the_agent(setup):
    world, desk, agent, project = setup
    write_ini(project, "upload_speed = ${sysenv.AGENT_SECRET}\nupload_flags = -x${sysenv.MINE}\n")
    desk.extra["MINE"] = "client-value"
    result = desk.cli(
        "-a", "lab-pi", "run", "-v", "-d", str(project), "-t", "upload", "--upload-port", "x.local"
    )
    # The client has no AGENT_SECRET: empty, as a local `pio run` there would see it.
    assert "uploader got ['', '-xclient-value']" in result.stdout
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        ("upload_speed = ${sysenv.AGENT_SECRET}\n", "which the agent does not resolve"),
        ("upload_flags = $ENV\n", "$ENV would read the agent's environment"),
        ("upload_flags = ${__import__('os').environ}\n", "is not a ${section.option} reference"),
    ],
)
async def test_a_client_that_sends_them_anyway_is_refused(setup, options, refusal):
    """A modified client skips its own resolving: the agent refuses the file."""
    world, desk, agent, project = setup
    write_ini(project, options)
    ini = project / "platformio.ini"
    fw = project / ".pio" / "build" / "dev" / "firmware.bin"
    files = [(fw, flash.transfer.hash_file(fw))]
    ini_entry = FileEntry("platformio.ini", ini.stat().st_size, _sha(ini))
    out: list[bytes] = []
    async with (
        Client.connect(world.relay.url, world.tokens["alice"], desk.home) as client,
        client.session("lab-pi") as session,
    ):
        with pytest.raises(RemoteError, match=refusal.replace("$", r"\$").replace("(", r"\(")):
            await flash.deploy(
                session, files, (ini, ini_entry), output=out.append, port="x.local", env="dev"
            )
    agent.stop()
    log = agent.stderr_text()
    assert SECRET not in b"".join(out).decode() and SECRET not in log


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
