"""`account login`: the token never has to be on a command line, and is never lost.

Through the real CLI against a real relay: a prompt on a real pty, stdin with
`--token -`, PIO_REMOTE_AUTH_TOKEN, `--token VALUE` with a warning, an empty
token refused without touching the stored login, and cleartext `ws://` warnings.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import stat
import subprocess
import termios
import time

import pytest
from conftest import PY, Env, World

from pio_remote.cli.account_cmds import cleartext_warning, is_loopback


@pytest.fixture
def desk(world: World) -> Env:
    home = world.tmp / "desk"
    home.mkdir()
    return Env(home)


def stored(desk: Env) -> dict:
    path = desk.home / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return json.loads(path.read_text())


def test_token_from_stdin(world, desk):
    token = world.account("alice")
    result = desk.cli("account", "login", "--relay", world.relay.url, "--token", "-", input=token)
    assert "as 'alice'" in result.stdout and "warning" not in result.stderr
    assert stored(desk) == {"relay": world.relay.url, "token": token}


def test_token_from_environment(world, desk):
    desk.extra["PIO_REMOTE_AUTH_TOKEN"] = world.account("alice")
    result = desk.cli("account", "login", "--relay", world.relay.url)
    assert "as 'alice'" in result.stdout and result.stderr == ""
    assert stored(desk)["token"] == world.account("alice")


def test_token_on_command_line_works_but_warns(world, desk):
    result = desk.cli("account", "login", "--relay", world.relay.url, "--token", world.account("a"))
    assert "as 'a'" in result.stdout
    assert "ps" in result.stderr and "history" in result.stderr and "--token -" in result.stderr


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_token_is_refused_and_keeps_the_stored_login(world, desk, bad):
    token = world.account("alice")
    desk.cli("account", "login", "--relay", world.relay.url, "--token", "-", input=token)
    result = desk.cli("account", "login", "--relay", world.relay.url, "--token", bad, check=False)
    assert result.returncode == 2 and "empty" in result.stderr and "Traceback" not in result.stderr
    result = desk.cli(
        "account", "login", "--relay", world.relay.url, "--token", "-", input="\n", check=False
    )
    assert result.returncode == 2 and "empty" in result.stderr
    assert stored(desk)["token"] == token
    assert "alice" in desk.cli("account", "show").stdout


def test_no_token_and_no_terminal_says_how(world, desk):
    result = desk.cli("account", "login", "--relay", world.relay.url, check=False, input="")
    assert result.returncode == 2 and "--token -" in result.stderr
    assert not (desk.home / "credentials.json").exists()


def test_prompt_on_a_terminal_hides_the_token(world, desk):
    """The prompt reads from the controlling terminal with echo off."""
    token = world.account("alice")
    master, slave = os.openpty()

    def own_terminal() -> None:
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [PY, "-m", "pio_remote", "account", "login", "--relay", world.relay.url],
        env=desk.env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        preexec_fn=own_terminal,
    )
    os.close(slave)
    try:
        seen = read_until(master, b"Token:")
        os.write(master, token.encode() + b"\n")
        seen += read_until(master, b"Logged in")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert token.encode() not in seen  # not echoed
    assert stored(desk)["token"] == token


def read_until(fd: int, marker: bytes, timeout: float = 30.0) -> bytes:
    deadline = time.monotonic() + timeout
    buf = b""
    while marker not in buf:
        left = deadline - time.monotonic()
        assert left > 0, f"never saw {marker!r}: {buf!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            buf += chunk
    assert marker in buf, buf
    return buf


def test_cleartext_relay_gets_a_warning_naming_wss(world, desk):
    """0.0.0.0 reaches this machine's relay, but it is not a loopback name: warn."""
    url = world.relay.url.replace("127.0.0.1", "0.0.0.0")
    result = desk.cli("account", "login", "--relay", url, "--token", "-", input=world.account("a"))
    assert "as 'a'" in result.stdout
    assert "clear" in result.stderr and url.replace("ws://", "wss://") in result.stderr


def test_agent_on_a_cleartext_relay_warns(world):
    lab = world.machine("lab", "alice")
    lab.extra["PIO_REMOTE_RELAY"] = world.relay.url.replace("127.0.0.1", "0.0.0.0")
    agent = world.start_agent(lab, "lab-pi", "--log-level", "error")
    assert agent.err is not None and "wss://0.0.0.0" in agent.err.text()
    quiet = world.start_agent(world.machine("lab2", "alice"), "lab-2", "--log-level", "error")
    assert quiet.err is not None and "warning" not in quiet.err.text()


@pytest.mark.parametrize(
    "url, loopback",
    [
        ("ws://127.0.0.1:8765", True),
        ("ws://127.3.4.5:1", True),
        ("ws://localhost:8765", True),
        ("ws://[::1]:8765", True),
        ("ws://relay.example.org", False),
        ("ws://10.0.0.2:8765", False),
        ("ws://0.0.0.0:8765", False),
        ("ws://localhost.evil.example:1", False),
        ("ws://[::1", False),
    ],
)
def test_loopback_hosts(url, loopback):
    assert is_loopback(url) is loopback
    assert (cleartext_warning(url) is None) is loopback
    assert cleartext_warning(url.replace("ws://", "wss://")) is None
