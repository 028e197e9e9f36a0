"""Every error class the CLI can meet, through the real CLI: one line, no traceback.

Each case runs `pio-remote` as a user would and checks the contract of
docs/cli.md "Exit codes": exactly one line on stderr that names the problem,
no `Traceback`, and the documented exit code (cli/common.py ERRORS).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from clitree import leaf_commands
from conftest import PY, Env, Proc, World

USAGE = 2
ERROR = 1


def one_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Assert the error contract and return the line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, f"expected one line on stderr, got: {result.stderr!r}"
    assert result.returncode == code, (result.returncode, result.stderr)
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    return lines[0]


@pytest.fixture
def desk(tmp_path: Path) -> Env:
    home = tmp_path / "desk"
    home.mkdir()
    return Env(home)


# ---- local state: no relay needed ------------------------------------------------------


def test_no_account_configured(desk):
    one_line(desk.cli("agent", "list", check=False), USAGE, "account login")


def test_home_is_a_regular_file(tmp_path):
    path = tmp_path / "not-a-dir"
    path.write_text("x")
    result = Env(path).cli("agent", "invite", check=False)
    one_line(result, USAGE, "not a directory", "PIO_REMOTE_HOME")


def test_home_not_writable(tmp_path):
    if os.geteuid() == 0:
        path = Path("/proc/1")  # even root cannot write here
    else:
        path = tmp_path / "ro"
        path.mkdir(mode=0o500)
    result = Env(path).cli("agent", "invite", check=False)
    one_line(result, USAGE, "not writable", "PIO_REMOTE_HOME")


@pytest.mark.parametrize(
    "content, words",
    [
        ("[1, 2]", ("credentials.json", "account login")),
        ('{"relay": 5, "token": "x"}', ("credentials.json", "account login")),
        ("{not json", ("credentials.json", "not valid JSON")),
    ],
)
def test_broken_credentials_file(desk, content, words):
    (desk.home / "credentials.json").write_text(content)
    one_line(desk.cli("agent", "list", check=False), USAGE, *words)


def test_broken_identity_key(desk):
    (desk.home / "identity.key").write_text("zz-not-hex\n")
    one_line(desk.cli("agent", "invite", check=False), USAGE, "identity.key")


@pytest.mark.parametrize("ttl", ["0", "-5"])
def test_invite_ttl_must_be_positive(desk, ttl):
    one_line(desk.cli("agent", "invite", "--ttl", ttl, check=False), USAGE, "--ttl")
    assert not (desk.home / "invites.json").exists()


def test_damaged_invite(desk):
    (desk.home / "credentials.json").write_text('{"relay": "ws://127.0.0.1:1", "token": "t"}')
    one_line(desk.cli("agent", "pair", "garbage", check=False), USAGE, "invite")


def test_firmware_without_upload_target(desk, tmp_path):
    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"\x01" * 16)
    result = desk.cli("run", "--firmware", str(fw), check=False)
    one_line(result, USAGE, "-t upload")
    result = desk.cli("run", "--firmware", str(fw), "-t", "upload", "-t", "clean", check=False)
    one_line(result, USAGE, "clean")


def test_target_without_platformio(desk, tmp_path):
    (tmp_path / "platformio.ini").write_text("[env:demo]\nplatform = native\n")
    bindir = tmp_path / "bin"  # no pio/platformio (the venv has them: the test extras)
    bindir.mkdir()
    desk.extra["PATH"] = str(bindir)
    result = desk.cli("run", "-d", str(tmp_path), "-t", "clean", check=False)
    one_line(result, USAGE, "PlatformIO", "clean")


def test_no_project(desk, tmp_path):
    result = desk.cli("run", "-d", str(tmp_path), "-t", "upload", check=False)
    one_line(result, USAGE, "platformio.ini")


def test_relay_refuses_connection(desk):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        desk.extra.update(PIO_REMOTE_RELAY=f"ws://127.0.0.1:{port}", PIO_REMOTE_AUTH_TOKEN="t")
        one_line(desk.cli("agent", "list", check=False), ERROR, "relay")


@pytest.mark.parametrize("url", ["notaurl", "http://127.0.0.1:1", "127.0.0.1:8765"])
def test_bad_relay_url(desk, url):
    desk.extra.update(PIO_REMOTE_RELAY=url, PIO_REMOTE_AUTH_TOKEN="t")
    one_line(desk.cli("agent", "list", check=False), USAGE, "ws://")


# ---- with a relay ------------------------------------------------------------------------


def test_bind_in_use(world: World):
    result = subprocess.run(
        [PY, "-m", "pio_remote", "relay", "serve", "--bind", f"127.0.0.1:{world.relay.port}"]
        + ["--data-dir", str(world.tmp / "other-data")],
        env=Env(world.tmp / "relay-home").env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    one_line(result, USAGE, "cannot listen", "--bind")


def test_bad_token(world: World):
    desk = world.machine("desk", "alice")
    desk.extra["PIO_REMOTE_AUTH_TOKEN"] = "not-a-token"
    one_line(desk.cli("agent", "list", check=False), USAGE, "token")


def test_offline_and_unpaired_agents(world: World):
    lab = world.machine("lab", "alice")
    desk = world.machine("desk", "alice")
    result = desk.cli("-a", "nosuch", "run", "--firmware", PY, "-t", "upload", check=False)
    one_line(result, ERROR, "offline")
    world.start_agent(lab, "lab-pi", "--log-level", "error")
    result = desk.cli("-a", "lab-pi", "device", "monitor", "-p", "/dev/null", check=False)
    one_line(result, ERROR, "not paired", "agent pair")


def test_agent_replaced_by_same_name(world: World):
    lab = world.machine("lab", "alice")
    first = world.start_agent(lab, "lab-pi", "--log-level", "error")
    world.start_agent(lab, "lab-pi", "--log-level", "error")  # same home: same key
    one_line(first.finished(), USAGE, "another agent named 'lab-pi'")


def test_agent_token_revoked(world: World):
    lab = world.machine("lab", "carol")
    agent = world.start_agent(lab, "lab-pi", "--log-level", "error")
    world.relay.admin("user", "remove", "carol")
    one_line(agent.finished(), USAGE, "revoked")


def slow_upload(world: World, tmp_path: Path) -> tuple[Proc, Proc]:
    """(agent, client) with the client's upload running on the agent, for a minute."""
    lab = world.machine("lab", "alice")
    (lab.home / "agent.toml").write_text(
        f'[[uploader]]\nports = "{tmp_path}/dev/*"\ncommand = "sh -c \'echo flashing; sleep 60\'"\n'
    )
    world.board(tmp_path / "dev" / "board0")
    agent = world.start_agent(
        lab, "lab-pi", "--port-glob", f"{tmp_path}/dev/*", "--log-level", "error"
    )
    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"\x02" * 1024)
    client = Proc(
        [PY, "-m", "pio_remote", "-a", "lab-pi", "run", "-s", "--firmware", str(fw), "-t", "upload"]
        + ["--upload-port", str(tmp_path / "dev" / "board0")],
        lab.env,
    )
    world.procs.append(client)
    client.wait_for("flashing")
    return agent, client


def test_relay_dies_during_upload_blames_the_relay(world: World, tmp_path):
    """The uploader is running when the relay goes: the error names the relay, not the agent."""
    _, client = slow_upload(world, tmp_path)
    world.relay.proc.stop(signal.SIGKILL)
    line = one_line(client.finished(), ERROR, "relay")
    assert "agent lab-pi" not in line and "agent 'lab-pi'" not in line, line


def test_agent_dies_during_upload_names_the_agent(world: World, tmp_path):
    agent, client = slow_upload(world, tmp_path)
    agent.stop(signal.SIGKILL)
    one_line(client.finished(), ERROR, "lab-pi")


def test_no_port_matches(world: World):
    lab = world.machine("lab", "alice")
    world.start_agent(lab, "lab-pi", "--log-level", "error")
    result = lab.cli("-a", "lab-pi", "device", "monitor", "-p", "/nowhere/*", check=False)
    one_line(result, USAGE, "/nowhere/*")


def test_error_table_is_documented():
    """Every exit code in cli/common.py ERRORS appears in docs/cli.md's table."""
    from pio_remote.cli import common

    doc = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    for module, name, code in common.ERRORS:
        assert f"`{name}`" in doc, f"{module}.{name} is not in docs/cli.md"
        assert f"| {code} |" in doc
    assert json.dumps(sorted(common.FATAL_RELAY_CODES))  # plain data, listed in the docs too
    for code in common.FATAL_RELAY_CODES:
        assert f"`{code}`" in doc, code


def _agent_commands() -> list[tuple[str, ...]]:
    from pio_remote.cli import cli

    return [p for p, _ in leaf_commands(cli) if p[0] in ("device", "run", "test", "update")]


@pytest.mark.parametrize("path", _agent_commands(), ids=" ".join)
def test_agent_option_after_the_command_says_where_it_goes(desk, path):
    result = desk.cli(*path, "-a", "lab-pi", check=False)
    line = one_line(result, USAGE, f"'pio-remote {' '.join(path)}' has no option '-a'")
    assert f"goes before the command: 'pio-remote -a lab-pi {' '.join(path)}'" in line


def test_agent_option_on_a_command_without_one_names_the_commands_that_take_it(desk):
    result = desk.cli("agent", "start", "--agent", "lab-pi", check=False)
    one_line(result, USAGE, "has no option '--agent'", "device, run, test and update")


def test_a_lease_longer_than_a_week_is_a_usage_error(desk):
    result = desk.cli(
        "-a", "lab", "device", "lock", "-p", "/dev/ttyACM0", "--ttl", "8d", check=False
    )
    one_line(result, USAGE, "--ttl", "at most a week")


def test_without_building_and_no_suite_folder_says_the_folder_is_needed(desk, tmp_path):
    project = tmp_path / "proj"
    (project / ".pio" / "build" / "uno").mkdir(parents=True)
    (project / ".pio" / "build" / "uno" / "firmware.hex").write_bytes(b":00000001FF\n")
    (project / "platformio.ini").write_text("[env:uno]\nplatform = atmelavr\n")
    result = desk.cli("test", "-d", str(project), "--without-building", check=False)
    line = one_line(result, USAGE, f"no test suites in {project / 'test'}", "test_<name>/")
    assert "--without-building needs it too" in line
    (project / "test" / "test_blink").mkdir(parents=True)
    listed = desk.cli("test", "-d", str(project), "--without-building", "--list-tests")
    assert listed.stdout.split() == ["uno:test_blink"]
