"""`device power` and `device reset` through a real relay, agent and client, on pty boards
that an owner's [[power]] commands (powerswitch.py) start and stop."""

from __future__ import annotations

import json
import subprocess

import pytest
import trio
from conftest import PY
from monitorkit import PTYDEV

from pio_remote.client.api import (
    BadParamsError,
    Client,
    NoPowerControlError,
    PortLeasedError,
    RemoteError,
    UnknownPortError,
)
from pio_remote.wire.serial_events import SerialSettings

SWITCH = PTYDEV.replace("ptydev.py", "powerswitch.py")


class Rig:
    """One agent ("lab") whose owner powers boards in ``dev/`` with powerswitch.py."""

    def __init__(self, world, tmp):
        self.world, self.tmp = world, tmp
        self.dev = tmp / "dev"
        self.dev.mkdir()
        self.board = self.dev / "b0"
        self.lab = world.machine("lab", "alice")
        (self.lab.home / "agent.toml").write_text(
            f'port_glob = "{self.dev}/*"\n'
            f'[[power]]\nports = "{self.dev}/b*"\n'
            f'on = "{PY} {SWITCH} on $PORT"\noff = "{PY} {SWITCH} off ${{PORT}}"\n'
            "cycle_delay_ms = 50\n"
            f'[[reset]]\nports = "{self.dev}/b*"\nstyle = "open"\n'
            f'[[uploader]]\nports = "{self.dev}/*"\ncommand = "{PY} -c pass $SOURCE"\n'
        )
        self.switch("on")
        world.start_agent(self.lab, "lab")
        self.ci1 = world.machine("ci1", "alice")
        self.ci2 = world.machine("ci2", "alice")
        for ci in (self.ci1, self.ci2):
            world.pair(self.lab, ci, "lab")

    def switch(self, action: str) -> None:
        subprocess.run([PY, SWITCH, action, str(self.board)], check=True, timeout=30)

    def calls(self) -> list[str]:
        return (self.dev / "b0.calls").read_text().splitlines()

    def connect(self, ci):
        return Client.connect(self.world.relay.url, self.world.account("alice"), ci.home)


@pytest.fixture
def rig(world, tmp_path):
    r = Rig(world, tmp_path)
    try:
        yield r
    finally:
        r.switch("off")


async def _read_until(mon, needle: bytes) -> bytes:
    seen = b""
    while needle not in seen:
        item = await mon.receive()
        assert item is not None, f"monitor ended before {needle!r}; saw {seen[-300:]!r}"
        if isinstance(item, bytes):
            seen += item
    return seen


async def test_cycle_brings_the_boot_banner_back_on_an_open_monitor(rig):
    with trio.fail_after(60):
        async with rig.connect(rig.ci1) as client, client.session("lab") as lab:
            [port] = [p for p in await lab.ports() if p.port == str(rig.board)]
            assert port.power is True
            async with lab.monitor(str(rig.board), SerialSettings()) as mon:
                await _read_until(mon, b"boot 1: ready")
                await lab.power(str(rig.board), "cycle")
                # A new board process counts its boots from 1 again: a real power cycle.
                await _read_until(mon, b"boot 1: rst:0x1 (POWERON)")
    assert rig.calls()[-2:] == [f"off {rig.board}", f"on {rig.board}"]


def test_cli_power_off_and_on_and_device_list_marks_power(rig):
    listed = json.loads(rig.ci1.cli("-a", "lab", "device", "list", "--json-output").stdout)
    [entry] = [d for d in listed["lab"] if d["port"] == str(rig.board)]
    assert entry["power"] is True
    off = rig.ci1.cli("-a", "lab", "device", "power", "off", "-p", str(rig.board))
    assert f"power off: {rig.board}" in off.stderr
    assert not rig.board.exists()
    listed = json.loads(rig.ci1.cli("-a", "lab", "device", "list", "--json-output").stdout)
    assert str(rig.board) not in [d["port"] for d in listed["lab"]]
    # The board is off and its device gone; the [[power]] glob still lets it be named.
    rig.ci1.cli("-a", "lab", "device", "power", "on", "-p", str(rig.board))
    assert rig.board.is_symlink()


def test_cli_reset_and_its_one_line_errors(rig):
    done = rig.ci1.cli("-a", "lab", "device", "reset", "-p", str(rig.board))
    assert f"reset {rig.board} (open)" in done.stderr
    # A pty has no DTR/RTS: the default style says so, and names the owner's fix.
    rig.world.spawn([PY, PTYDEV, "echo", str(rig.dev / "c0")], rig.lab.env).wait_for("ptydev")
    plain = rig.ci1.cli("-a", "lab", "device", "reset", "-p", str(rig.dev / "c0"), check=False)
    assert plain.returncode == 1 and len(plain.stderr.strip().splitlines()) == 1
    assert "has no DTR/RTS lines to pulse" in plain.stderr and 'style = "open"' in plain.stderr
    none = rig.ci1.cli(
        "-a", "lab", "device", "power", "off", "-p", str(rig.dev / "c0"), check=False
    )
    assert "has no power control for" in none.stderr and "[[power]]" in none.stderr
    bad = rig.ci1.cli("-a", "lab", "device", "power", "on", "-p", "/etc/passwd", check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("Error: port /etc/passwd is not offered by agent")


ATTACKS = [
    "{board}; touch {tmp}/pwned",
    "{board} $(touch {tmp}/pwned)",
    "{dev}/../dev/b0",
    "{dev}/./b0",
    "{dev}/b0/../../pwned",
    "{dev}/x/b0",
    "-a",
    "--help",
    "{dev}/b0\x00",
    "*",
    "{dev}/b*",
    "{dev}/b[0]",
    "{dev}/b 0",
]


async def test_attack_no_client_string_reaches_a_power_command(rig):
    """Only a port the gate accepts and the owner's glob matches becomes $PORT."""
    before = rig.calls()
    with trio.fail_after(60):
        async with rig.connect(rig.ci1) as client, client.session("lab") as lab:
            for attack in ATTACKS:
                port = attack.format(board=rig.board, tmp=rig.tmp, dev=rig.dev)
                for action in ("off", "cycle", "on"):
                    with pytest.raises(RemoteError) as err:
                        await lab.power(port, action)
                    assert isinstance(err.value, UnknownPortError | NoPowerControlError), port
                with pytest.raises(UnknownPortError):
                    await lab.reset(port)
    assert rig.calls() == before  # the owner's command never ran
    assert not (rig.tmp / "pwned").exists()
    assert rig.board.is_symlink()


async def test_attack_extra_parameters_and_actions_are_refused(rig):
    with trio.fail_after(30):
        async with rig.connect(rig.ci1) as client, client.session("lab") as lab:
            for params in (
                {"port": str(rig.board), "action": "reboot"},
                {"port": str(rig.board), "action": "off", "command": "touch pwned"},
                {"port": str(rig.board), "action": ["off"]},
            ):
                with pytest.raises(BadParamsError):
                    await lab.call("device.power", **params)
    assert rig.calls() == ["on " + str(rig.board)]


async def test_attack_another_clients_lease_blocks_power_and_reset(rig):
    board = str(rig.board)
    with trio.fail_after(60):
        async with (
            rig.connect(rig.ci1) as c1,
            c1.session("lab") as holder,
            rig.connect(rig.ci2) as c2,
            c2.session("lab") as other,
        ):
            async with holder.lock(board) as lease:
                for attempt in (other.power(board, "off"), other.reset(board)):
                    with pytest.raises(PortLeasedError) as err:
                        await attempt
                    assert "alice (client key " in str(err.value) and lease.id
                assert rig.board.is_symlink()  # still powered
                await holder.power(board, "cycle")  # the holder may
            await other.power(board, "off")  # free again
            assert not rig.board.exists()
            await other.power(board, "on")
    assert rig.calls()[1:] == [f"off {board}", f"on {board}", f"off {board}", f"on {board}"]


async def test_the_agent_reports_the_image_it_flashed_and_upload_skips_it(rig, tmp_path):
    image = tmp_path / "fw.bin"
    image.write_bytes(b"image v1" * 100)
    board = str(rig.board)
    with trio.fail_after(60):
        async with rig.connect(rig.ci1) as client, client.session("lab") as lab:
            first = await lab.upload(image, board, skip_unchanged=True)
            assert not first.skipped
            [port] = [p for p in await lab.ports() if p.port == board]
            assert port.flashed_sha256 == first.sha256
            again = await lab.upload(image, board, skip_unchanged=True)
            assert again.skipped and again.sha256 == first.sha256
            image.write_bytes(b"image v2" * 100)
            changed = await lab.upload(image, board, skip_unchanged=True)
            assert not changed.skipped and changed.sha256 != first.sha256
