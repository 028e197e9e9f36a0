"""systemd integration: Type=notify readiness from real relay and agent processes, and
the unit files in scripts/systemd/ say what docs/self-hosting.md promises."""

from __future__ import annotations

import configparser
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PY, ROOT, Env, Proc

UNITS = ROOT / "scripts" / "systemd"


class FakeNotifySocket:
    """What systemd listens on for a Type=notify service: a unix datagram socket."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def next(self, timeout: float = 30.0) -> dict[str, str]:
        """The next datagram as KEY=VALUE pairs; fails after ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines() if line)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    fake = FakeNotifySocket(tmp_path / "notify")
    yield fake
    fake.close()


def test_relay_is_ready_only_when_listening_and_says_stopping(world, notify_socket, tmp_path):
    env = {**Env(tmp_path / "h").env, "NOTIFY_SOCKET": str(notify_socket.path)}
    relay = Proc(
        [
            PY,
            "-m",
            "pio_remote",
            "relay",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        env,
    )
    world.procs.append(relay)
    ready = notify_socket.next()
    assert ready["READY"] == "1"
    url = relay.wait_for(r"relay listening on (ws://\S+)").group(1)
    assert ready["STATUS"].endswith(url)
    port = int(url.rsplit(":", 1)[1])
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # really listening
    relay.popen.send_signal(signal.SIGTERM)
    assert notify_socket.next() == {"STOPPING": "1"}
    assert relay.popen.wait(timeout=20) == 0
    stderr = relay.stderr_text()
    assert "\x1b[" not in stderr, "no colour off a terminal"
    assert any("shutting down" in line for line in stderr.splitlines())


def test_agent_is_ready_once_registered_with_the_relay(world, notify_socket, tmp_path):
    pi = world.machine("pi", "ann")
    agent = Proc(
        [PY, "-m", "pio_remote", "agent", "start", "-n", "lab"],
        {**pi.env, "NOTIFY_SOCKET": str(notify_socket.path)},
    )
    world.procs.append(agent)
    ready = notify_socket.next()
    assert ready["READY"] == "1"
    assert "ann/lab online" in ready["STATUS"]
    # At READY the relay already lists it: no wait needed.
    listing = pi.cli("agent", "list").stdout
    assert "lab" in listing
    agent.popen.send_signal(signal.SIGTERM)
    assert notify_socket.next() == {"STOPPING": "1"}
    assert agent.popen.wait(timeout=20) == 0
    lines = agent.stderr_text().splitlines()
    assert lines and all("\x1b[" not in line for line in lines)


def test_notify_without_a_service_manager_is_a_no_op(monkeypatch):
    from pio_remote import daemon

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert daemon.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    assert daemon.notify("READY=1") is False


def test_notify_reaches_an_abstract_socket(monkeypatch):
    from pio_remote import daemon

    name = f"pio-remote-test-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert daemon.notify("READY=1")
        sock.settimeout(5)
        assert sock.recv(100) == b"READY=1"


def test_tracebacks_are_logged_on_one_line(capsys):
    import logging

    from pio_remote import daemon

    daemon.setup_logging("info")
    try:
        raise ValueError("first\nsecond")
    except ValueError:
        logging.getLogger("t").exception("boom")
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "boom" in err and "ValueError: first | second" in err


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


def test_agent_unit_is_unprivileged_and_confined():
    service = _unit("pio-remote-agent.service")["Service"]
    assert service["Type"] == "notify"
    assert service["User"] not in ("root", "0")
    assert service["SupplementaryGroups"] == "dialout"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service["Restart"] == "on-failure"
    home = service["WorkingDirectory"]
    assert service["ReadWritePaths"] == home
    assert all(home in line for line in service["Environment"].splitlines() if "=/" in line)


def test_relay_unit_is_notify_and_restarts():
    service = _unit("pio-remote-relay.service")["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "on-failure"
    assert service["User"] not in ("root", "0")
    assert "--data-dir /var/lib/" + service["StateDirectory"] in service["ExecStart"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
@pytest.mark.parametrize("name", ["pio-remote-relay.service", "pio-remote-agent.service"])
def test_systemd_accepts_the_unit(name, tmp_path):
    # ExecStart must name an existing executable for `verify`: point it at this Python.
    text = (UNITS / name).read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    binary = exec_start.split("=", 1)[1].split()[0]
    unit = tmp_path / name
    unit.write_text(text.replace(binary, sys.executable))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Unknown" not in result.stderr, result.stderr
