"""A paired client attacks the agent's trust boundary (issue 15 items 1 and 3).

Real relay, agent and client processes; the attacker is a paired client of the
same account, talking to the agent through the client library as any program
could. Each test makes the attacker's move and checks what must not happen on
the agent's machine, whatever the call answers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PY

from pio_remote.client import upload as flash
from pio_remote.client.api import Client, RemoteError, wait_result
from pio_remote.wire import transfer

RECORDER = """\
import sys
with open(sys.argv[1], "a") as fh:
    fh.write(sys.argv[2] + "\\n")
"""


class Lab:
    """An agent with two ptys offered under {tmp}/vb and an [[uploader]] that only
    records the port it was given; the owner's desk and an attacker's laptop."""

    def __init__(self, world, tmp: Path):
        self.world = world
        self.tmp = tmp
        self.vb = tmp / "vb"
        self.vb.mkdir()
        self.log = tmp / "uploads.log"
        (tmp / "recorder.py").write_text(RECORDER)
        self.machine = world.machine("lab", "alice")
        (self.machine.home / "agent.toml").write_text(
            "allow_remote_build = true\n"  # project.sync is part of the attack surface
            f'[[uploader]]\nports = "{self.vb}/*"\n'
            f'command = "{PY} {tmp}/recorder.py {self.log} $UPLOAD_PORT"\n'
        )
        self.owner = world.machine("owner", "alice")
        self.attacker = world.machine("laptop", "alice")

    def start(self) -> None:
        self.world.start_agent(self.machine, "lab", "--port-glob", f"{self.vb}/*")
        for client in (self.owner, self.attacker):
            self.world.pair(self.machine, client, "lab")

    def connect(self, who) -> Client:
        return Client.connect(self.world.relay.url, self.world.tokens["alice"], home_path=who.home)

    @property
    def work(self) -> Path:
        return self.machine.home / "work"

    def flashed(self) -> list[str]:
        """Every port the uploader was started with."""
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def lab(world, tmp_path) -> Iterator[Lab]:
    lab = Lab(world, tmp_path)
    master, slave = os.openpty()
    for name in ("board0", "stable0"):  # two listed names of one board, as udev makes
        (lab.vb / name).symlink_to(os.ttyname(slave))
    lab.start()
    try:
        yield lab
    finally:
        os.close(master)
        os.close(slave)


async def put(agent, tmp: Path, name: str, data: bytes) -> transfer.FileEntry:
    path = tmp / f"upload-{hashlib.sha256(data).hexdigest()[:8]}"
    path.write_bytes(data)
    entry = transfer.FileEntry(name, len(data), hashlib.sha256(data).hexdigest())
    await flash.put_file(agent, path, entry)
    return entry


async def attempt(agent, **params) -> RemoteError | None:
    """One upload.flash; the error it ended with, or None if it ran."""
    try:
        await flash.flash(agent, output=lambda _: None, **params)
    except RemoteError as exc:
        return exc
    return None


# ---- item 1: no file outside the job directory --------------------------------------------


async def test_default_section_build_dir_and_dotdot_env_never_write_outside(lab, tmp_path):
    """The attack as found: [DEFAULT] build_dir, env '..', a payload named authorized_keys."""
    ssh = tmp_path / "ssh"
    ssh.mkdir()
    (ssh / "authorized_keys").write_text("ssh-ed25519 AAAA owner\n")
    ini = f"[DEFAULT]\nbuild_dir = {ssh}/x\n[platformio]\n[env:x]\n".encode()
    async with lab.connect(lab.attacker) as client, client.session("lab") as agent:
        sent_ini = await put(agent, tmp_path, "platformio.ini", ini)
        payload = await put(agent, tmp_path, "authorized_keys", b"ssh-ed25519 AAAA attacker\n")
        for port in ("", f"{lab.vb}/board0"):
            await attempt(
                agent,
                port=port,
                env="..",
                source="authorized_keys",
                files=[payload],
                ini=sent_ini.sha256,
            )
    assert (ssh / "authorized_keys").read_text() == "ssh-ed25519 AAAA owner\n"
    assert sorted(p.name for p in ssh.iterdir()) == ["authorized_keys"]
    assert lab.flashed() == []


@pytest.mark.parametrize(
    "build_dir",
    ["{outside}", "../../outside", "{outside}\0x"],
    ids=["absolute", "relative-dotdot", "nul"],
)
async def test_build_dir_from_the_client_never_leaves_the_job(lab, tmp_path, build_dir):
    """Absolute, '..' and NUL build paths: the agent's own platformio.ini has no
    build_dir (iniwriter), so whatever the call answers, nothing is written outside."""
    outside = tmp_path / "outside"
    where = build_dir.format(outside=outside)
    ini = f"[DEFAULT]\nbuild_dir = {where}\n[platformio]\n[env:x]\nbuild_dir = {where}\n"
    async with lab.connect(lab.attacker) as client, client.session("lab") as agent:
        sent_ini = await put(agent, tmp_path, "platformio.ini", ini.encode())
        fw = await put(agent, tmp_path, "fw.bin", b"\x7fELF firmware")
        err = await attempt(
            agent, port="", env="x", source="fw.bin", files=[fw], ini=sent_ini.sha256
        )
    assert err is not None and err.code == "no_uploader", err  # port "": nothing to flash
    assert not outside.exists()
    assert not (lab.work / "outside").exists()
    assert sorted(p.name for p in lab.work.iterdir()) == ["cache", "cache-owners", "jobs"]


async def test_dotdot_env_is_refused_before_a_job_is_laid_out(lab, tmp_path):
    async with lab.connect(lab.attacker) as client, client.session("lab") as agent:
        fw = await put(agent, tmp_path, "fw.bin", b"\x7fELF firmware")
        for env in ("..", ".", "/etc", "x\0y"):
            err = await attempt(agent, port="", env=env, source="fw.bin", files=[fw])
            assert err is not None and err.code == "bad_params", (env, err)
            assert "environment name" in str(err)
    assert lab.flashed() == []


async def test_absolute_and_nul_names_are_refused(lab, tmp_path):
    """Firmware names, sources and project ids name no path of the agent's."""
    async with lab.connect(lab.attacker) as client, client.session("lab") as agent:
        fw = await put(agent, tmp_path, "fw.bin", b"\x7fELF firmware")
        for name in ("/etc/passwd", "a\0b", "..", ""):
            evil = transfer.FileEntry(name, fw.size, fw.sha256)
            err = await attempt(agent, port="", source=name, files=[evil])
            assert err is not None and err.code == "bad_params", (name, err)
        for project in ("/etc", "../" * 6, "0" * 15 + "\0"):
            with pytest.raises(RemoteError) as caught:
                await agent.call("project.sync", project=project)
            assert caught.value.code == "bad_params"
    assert lab.flashed() == []


async def test_a_client_file_never_takes_the_place_of_the_agents_own(lab, tmp_path):
    """A file named like the job's pgid record or its platformio.ini is refused; the
    agent never writes into the client's file (a hard link to a cached blob)."""
    data = b"\x7fELF firmware"
    async with lab.connect(lab.attacker) as client, client.session("lab") as agent:
        fw = await put(agent, tmp_path, "fw.bin", data)
        board = f"{lab.vb}/board0"
        # Without an ini the files lie at the job's root, where PlatformIO would read a
        # platformio.ini; with one they go to .pio/build/<env>/ (the agent's layout).
        for name in (".uploader-pgid", "platformio.ini"):
            evil = transfer.FileEntry(name, fw.size, fw.sha256)
            err = await attempt(agent, port=board, source="fw.bin", files=[fw, evil])
            assert err is not None and err.code == "bad_path", (name, err)
            assert "never overwrites" in str(err)
    assert lab.flashed() == []
    assert (lab.work / "cache" / fw.sha256).read_bytes() == data


async def test_a_symlink_planted_in_a_synced_tree_is_never_followed(lab, tmp_path):
    """What a build left behind (a directory swapped for a link to the owner's files)
    must not let the next sync delete or write there."""
    outside = tmp_path / "owner-files"
    outside.mkdir()
    (outside / "a.c").write_text("owner's\n")
    pid = "ab" * 16
    async with lab.connect(lab.attacker) as client, client.session("lab") as agent:
        ini = await put(agent, tmp_path, "platformio.ini", b"[env:x]\nplatform = native\n")
        src = await put(agent, tmp_path, "a.c", b"int a;\n")

        async def sync(files: dict[str, transfer.FileEntry]) -> dict | RemoteError:
            index = {path: [e.size, e.sha256] for path, e in files.items()}
            try:
                async with agent.open_call("project.sync", project=pid) as call:
                    await flash.send_json(call, index)
                    return await wait_result(call)
            except RemoteError as exc:
                return exc

        first = await sync({"platformio.ini": ini, "lib/x/a.c": src})
        assert first == {"updated": 2, "removed": 0}
        (tree,) = (lab.work / "projects").glob(f"*/{pid}")
        (tree / "lib" / "x" / "a.c").unlink()
        (tree / "lib" / "x").rmdir()
        (tree / "lib" / "x").symlink_to(outside)  # planted

        await sync({"platformio.ini": ini})  # lib/x/a.c is gone from the client's tree
        through = await sync({"platformio.ini": ini, "lib/x/b.c": src})
        assert isinstance(through, RemoteError), through
    assert (outside / "a.c").read_text() == "owner's\n"
    assert sorted(p.name for p in outside.iterdir()) == ["a.c"]


# ---- item 3: leases and ports ------------------------------------------------------------


ALIASES = ["{vb}/./board0", "{vb}//board0", "{vb}/x/../board0"]


async def test_a_lease_cannot_be_bypassed_through_a_path_alias(lab, tmp_path):
    board = f"{lab.vb}/board0"
    async with lab.connect(lab.owner) as owner, owner.session("lab") as owner_agent:
        lease = await owner_agent.call("device.lock", port=board, ttl=600)
        assert lease["port"] == board
        async with lab.connect(lab.attacker) as client, client.session("lab") as agent:
            fw = await put(agent, tmp_path, "fw.bin", b"\x7fELF firmware")
            err = await attempt(agent, port=board, source="fw.bin", files=[fw])
            assert err is not None and err.code == "port_leased", err  # the lease holds
            for alias in [a.format(vb=lab.vb) for a in ALIASES]:
                err = await attempt(agent, port=alias, source="fw.bin", files=[fw])
                assert err is not None and err.code == "unknown_port", (alias, err)
                with pytest.raises(RemoteError) as caught:
                    await agent.call("device.lock", port=alias, ttl=60)
                assert caught.value.code == "unknown_port", alias
            # Another name the agent itself lists for the same board shares its lease.
            stable = f"{lab.vb}/stable0"
            err = await attempt(agent, port=stable, source="fw.bin", files=[fw])
            assert err is not None and err.code == "port_leased", err
            with pytest.raises(RemoteError) as caught:
                await agent.call("device.lock", port=stable, ttl=60)
            assert caught.value.code == "port_leased"
            listed = {d["port"]: d.get("lease") for d in await agent.call("device.list")}
            assert listed[board] is not None and listed[stable] == listed[board]
    assert lab.flashed() == []


async def test_a_traversal_port_never_reaches_an_uploader(lab, tmp_path):
    shadow = f"{lab.vb}/../../../etc/shadow"
    async with lab.connect(lab.attacker) as client, client.session("lab") as agent:
        fw = await put(agent, tmp_path, "fw.bin", b"\x7fELF firmware")
        for port in (shadow, "/etc/shadow", f"{lab.vb}/..", "..", "fw.bin\0"):
            err = await attempt(agent, port=port, source="fw.bin", files=[fw])
            assert err is not None and err.code == "unknown_port", (port, err)
        with pytest.raises(RemoteError) as caught:
            await agent.call("device.lock", port=shadow, ttl=60)
        assert caught.value.code == "unknown_port"
        with pytest.raises(RemoteError) as caught:
            await agent.call("test.run", port=shadow, upload=None, testing=False)
        assert caught.value.code == "unknown_port"
        # The real board still flashes, under the name the agent lists.
        assert await attempt(agent, port=f"{lab.vb}/board0", source="fw.bin", files=[fw]) is None
    assert lab.flashed() == [f"{lab.vb}/board0"]  # the uploader saw a listed name only
