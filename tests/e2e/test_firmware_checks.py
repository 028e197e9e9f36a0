"""Firmware that is empty, not a regular file, or over the agent's limit is refused
before any work (issue 8 item 16)."""

from __future__ import annotations

import pytest
from conftest import Env

from pio_remote.client import upload as flash
from pio_remote.client.api import Client, RemoteError
from pio_remote.wire import transfer


def test_empty_and_device_firmware_is_refused_with_one_line(tmp_path):
    offline = Env(
        tmp_path / "home",
        {"PIO_REMOTE_RELAY": "ws://127.0.0.1:9", "PIO_REMOTE_AUTH_TOKEN": "unused"},
    )
    offline.home.mkdir()
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    for firmware, message in [
        ("/dev/zero", "/dev/zero is not a regular file"),
        (str(empty), "empty.bin is empty: nothing to flash"),
    ]:
        result = offline.cli("run", "-t", "upload", "--firmware", firmware, check=False)
        assert result.returncode == 1, result
        assert message in result.stderr and "Traceback" not in result.stderr


async def test_firmware_over_the_agents_limit_is_refused_before_it_is_hashed(
    world, tmp_path, monkeypatch
):
    lab, desk = world.machine("lab", "alice"), world.machine("desk", "alice")
    (lab.home / "agent.toml").write_text("max_upload_bytes = 104857600\n")
    world.start_agent(lab, "lab-pi")
    world.pair(lab, desk, "lab-pi")
    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:  # sparse: 600 MiB on paper, nothing on disk
        fh.truncate(600 * 1024 * 1024)
    hashed = []
    real_hash = transfer.hash_file
    monkeypatch.setattr(transfer, "hash_file", lambda p, *a: hashed.append(p) or real_hash(p, *a))
    async with (
        flash.Hashes([big]) as hashes,
        Client.connect(world.relay.url, world.tokens["alice"], desk.home) as client,
        client.session("lab-pi") as agent,
    ):
        with pytest.raises(RemoteError, match=r"big.bin is 629145600 bytes .* limit of 104857600"):
            await hashes.get([big], agent)
    assert hashed == []
