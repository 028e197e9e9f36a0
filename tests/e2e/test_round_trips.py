"""Round trips per command, counted from a delay proxy's trace (issue 17).

The client reaches the relay through ``delayproxy.DelayProxy``; the counts come
from when the client waited for the relay's bytes, not from timings, so a
loaded machine changes how long a command takes but not what it counts.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from conftest import PY, Env
from delayproxy import DelayProxy

RTT = 0.3  # large beside local processing, so a pause is a round trip, not a slow step

AGENT_TOML = f"""
[[uploader]]
ports = "*.local"
command = "{PY} -c 'import sys; print(\\"flashed\\", sys.argv[1])' $UPLOAD_PORT"
"""


@pytest.fixture
def desk(world, tmp_path: Path):
    """A paired client whose relay is behind a delay proxy; yields (client env, proxy)."""
    lab = world.machine("lab", "alice")
    (lab.home / "agent.toml").write_text(AGENT_TOML)
    world.start_agent(lab, "lab-pi")
    desk = world.machine("desk", "alice")
    world.pair(lab, desk, "lab-pi")
    with DelayProxy(world.relay.port, RTT) as proxy:
        far = Env(desk.home, dict(desk.extra, PIO_REMOTE_RELAY=f"ws://127.0.0.1:{proxy.port}"))
        yield far, proxy


class Count(int):
    """A count that shows the trace it came from when an assertion fails."""

    trace = ""

    def __repr__(self) -> str:
        return f"{int(self)} round trips from this trace:\n{self.trace}"


def counted(proxy: DelayProxy, env: Env, *args: str) -> Count:
    """Run one command through the proxy; the round trips of its one connection."""
    proxy.reset()
    env.cli(*args)
    (conn,) = proxy.snapshot()
    count = Count(conn.round_trips(RTT))
    count.trace = conn.timeline()
    return count


def test_agent_list_and_device_list_take_three_round_trips(desk) -> None:
    env, proxy = desk
    # TCP; upgrade with HELLO (and LIST) answered with 101, WELCOME; LIST.
    assert counted(proxy, env, "agent", "list") == 3
    # TCP; upgrade with HELLO, OPEN and Noise message 1; device.list and forward.list.
    assert counted(proxy, env, "-a", "lab-pi", "device", "list") == 3


def test_an_upload_of_a_new_file_takes_five_round_trips(desk, tmp_path: Path) -> None:
    env, proxy = desk
    fw = tmp_path / "fw.bin"
    fw.write_bytes(secrets.token_bytes(1024 * 1024))
    args = ("-a", "lab-pi", "run", "-t", "upload", "--firmware", str(fw))
    # TCP; upgrade with the session's opening; flash (answers "missing");
    # put with its data and the flash behind it; the flash's result.
    assert counted(proxy, env, *args, "--upload-port", "esp.local") <= 5
    # The same file again comes from the agent's cache: one flash.
    assert counted(proxy, env, *args, "--upload-port", "esp.local") == 3
