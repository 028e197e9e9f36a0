"""The platformio.ini the agent hands to PlatformIO is its own (issue 15 items 1, 2 and 6).

A stand-in ``pio`` on the agent's PATH copies every platformio.ini it is given to
a dump directory, so each test reads exactly what PlatformIO would have run. The
attacks are the ones reproduced against real PlatformIO Core: options hidden in
``[DEFAULT]``, ``!command`` items, the old ``extra_script`` name, a ``!`` that only
appears after interpolation, a platform from ``symlink://``; and a few-kilobyte
file whose references multiply, which froze the agent for every client.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import trio
from conftest import PY

from pio_remote.client.api import Client, RemoteError, wait_result

FAKE_PIO = """\
#!{py}
import json, os, shutil, sys
args = sys.argv[1:]
d = args[args.index("-d") + 1]
env = args[args.index("-e") + 1]
dumps = {dumps!r}
n = len(os.listdir(dumps))
shutil.copyfile(os.path.join(d, "platformio.ini"), os.path.join(dumps, f"{{n:03d}}.ini"))
with open(os.path.join(dumps, f"{{n:03d}}.json"), "w") as fh:
    json.dump(args, fh)
if "nobuild" not in args:
    build = os.path.join(d, ".pio", "build", env)
    os.makedirs(build, exist_ok=True)
    with open(os.path.join(build, "firmware.bin"), "wb") as fh:
        fh.write(b"built")
print("fake pio", " ".join(args[:1]), env)
"""
FORBIDDEN = ("extra_scripts", "extra_script", "build_dir", "!", "symlink", "DEFAULT", "/victim")


class Site:
    """One agent with a stand-in PlatformIO, and two paired client machines."""

    def __init__(self, world, tmp: Path):
        self.world = world
        self.tmp = tmp
        self.dumps = tmp / "dumps"
        self.dumps.mkdir()
        bindir = tmp / "agent-bin"
        bindir.mkdir()
        (bindir / "pio").write_text(FAKE_PIO.format(py=PY, dumps=str(self.dumps)))
        (bindir / "pio").chmod(0o755)
        self.lab = world.machine("lab", "alice")
        self.lab.extra["PATH"] = f"{bindir}{os.pathsep}{os.environ['PATH']}"
        # The fake pio keeps what it is handed outside the job: no sandbox for it.
        (self.lab.home / "agent.toml").write_text(
            'allow_remote_build = true\nremote_build_sandbox = "none"\n'
            f'[[uploader]]\nports = "echo.local"\ncommand = "{PY} -c pass $UPLOAD_SPEED"\n'
        )
        self.agent = world.start_agent(self.lab, "lab-pi")
        self.desk = world.machine("desk", "alice")
        self.other = world.machine("other", "alice")
        world.pair(self.lab, self.desk, "lab-pi")
        world.pair(self.lab, self.other, "lab-pi")

    def inis(self) -> list[str]:
        """Every platformio.ini PlatformIO on the agent was handed, in order."""
        return [p.read_text() for p in sorted(self.dumps.glob("*.ini"))]

    def connect(self, machine=None) -> Client:
        machine = machine or self.desk
        return Client.connect(self.world.relay.url, self.world.tokens["alice"], machine.home)


@pytest.fixture
def site(world, tmp_path):
    return Site(world, tmp_path)


async def put(agent, name: str, data: bytes) -> dict[str, object]:
    """A blob into the agent's cache, as ``upload.put`` does it; its file entry."""
    sha = hashlib.sha256(data).hexdigest()
    async with agent.open_call("upload.put", name=name, size=len(data), sha256=sha) as call:
        await call.send(data)
        await call.send_eof()
        await wait_result(call)
    return {"name": name, "size": len(data), "sha256": sha}


async def flash(agent, ini: str, port: str = "ota.local", env: str = "x", **kw) -> object:
    fw = await put(agent, "authorized_keys", b"ssh-ed25519 AAAA attacker\n")
    ini_entry = await put(agent, "platformio.ini", ini.encode())
    return await agent.call(
        "upload.flash",
        port=port,
        env=env,
        source="authorized_keys",
        files=[fw],
        ini=ini_entry["sha256"],
        **kw,
    )


async def test_default_section_cannot_move_the_build_dir_or_add_scripts(site, tmp_path):
    """Attacker puts build_dir/extra_scripts in [DEFAULT] -> no file outside the job, no
    script or path in the ini PlatformIO runs."""
    victim = tmp_path / "victim"
    ini = (
        f"[DEFAULT]\nbuild_dir = {victim}\nextra_scripts = pre:evil.py\n"
        f"[platformio]\nbuild_dir = {victim}\nworkspace_dir = {victim}\n"
        "extra_configs = /etc/other.ini\n[env:x]\nplatform = ststm32\nboard = b\n"
        "upload_port = /dev/ttyS0\n"
    )
    async with site.connect() as client, client.session("lab-pi") as agent:
        result = await flash(agent, ini)
    assert result["exit_code"] == 0
    assert not victim.exists()
    [written] = site.inis()
    assert not any(word in written for word in (*FORBIDDEN, "extra_configs", "/dev/ttyS0"))
    [argv] = [json.loads(p.read_text()) for p in site.dumps.glob("*.json")]
    assert argv[argv.index("--upload-port") + 1] == "ota.local"


@pytest.mark.parametrize(
    "options",
    [
        "build_flags = -DX, !id > {marker}",
        "build_flags =\n    -DX\n    !id > {marker}",
        "custom = !id > {marker}\nbuild_flags = ${{env:x.custom}}",
        "platform = symlink://lib/plat",
        "lib_deps = symlink:///home/pi/.pio-remote",
    ],
)
async def test_commands_and_local_platforms_never_reach_platformio(site, tmp_path, options):
    """Attacker hides a command (or a platform from a path) in an option -> the flash is
    refused with one line naming the option, and PlatformIO never runs."""
    marker = tmp_path / "ran"
    ini = "[env:x]\nboard = b\n" + options.format(marker=marker) + "\n"
    async with site.connect() as client, client.session("lab-pi") as agent:
        with pytest.raises(RemoteError, match=r"^platformio.ini: option \S+") as err:
            await flash(agent, ini)
    assert err.value.code == "bad_project" and "\n" not in str(err.value)
    assert site.inis() == []


def make_project(root: Path, options: str) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (root / "lib" / "plat").mkdir(parents=True)
    (root / "lib" / "plat" / "platform.json").write_text("{}\n")
    (root / "lib" / "plat" / "evil.py").write_text("import os; os.system('id')\n")
    (root / "platformio.ini").write_text(
        "[DEFAULT]\nextra_scripts = pre:lib/plat/evil.py\n"
        f"[env:dev]\nplatform = ststm32\nboard = b\n{options}"
    )
    return root


@pytest.mark.parametrize(
    ("options", "refused"),
    [
        ("", None),  # [DEFAULT] extra_scripts alone: left out, the build goes on
        ("extra_script = lib/plat/evil.py\n", None),
        ("build_flags = -DX, !id\n", "option build_flags holds a !command"),
        ("custom = !id\nbuild_flags = -DA, ${env:dev.custom}\n", "option build_flags holds"),
        ("platform = symlink://lib/plat\n", "option platform: 'symlink://lib/plat' is not"),
        ("platform = lib/plat\n", "option platform: 'lib/plat' names a path in the project"),
    ],
)
def test_remote_build_runs_only_the_agents_own_ini(site, tmp_path, options, refused):
    """Attacker syncs a project for `run -r` whose ini runs code -> PlatformIO on the
    agent is never handed extra_scripts, a !command or a platform from the tree."""
    project = make_project(tmp_path / "proj", options)
    result = site.desk.cli(
        "-a", "lab-pi", "run", "-r", "-d", str(project), "-t", "upload",
        "--upload-port", "ota.local", check=False,
    )  # fmt: skip
    if refused is None:
        assert result.returncode == 0, result.stderr
        assert [len(site.inis())] == [2]  # the build, then the upload
        for written in site.inis():
            assert "[env:dev]" in written
            assert not any(word in written for word in FORBIDDEN)
        site.agent.stop()
        assert "left out of the client's platformio.ini: '[DEFAULT]" in site.agent.stderr_text()
    else:
        assert result.returncode != 0
        assert refused in result.stderr
        assert site.inis() == []


async def test_interpolation_bomb_leaves_other_clients_served(site):
    """Attacker sends a 2.3 KB ini whose references expand to gigabytes -> the call fails
    in one line and another client's `device list` is answered meanwhile."""
    lines = ["[env:x]", "l0 = 1"]
    lines += [f"l{i} = " + f"${{env:x.l{i - 1}}}" * 50 for i in range(1, 5)]
    ini = "\n".join([*lines, "upload_speed = ${env:x.l4}", "upload_protocol = ${env:x.l4}"])
    assert len(ini) < 2500
    async with (
        site.connect() as client,
        client.session("lab-pi") as attacker,
        site.connect(site.other) as other_client,
        other_client.session("lab-pi") as victim,
    ):
        fw = await put(attacker, "fw.bin", b"\x00" * 64)
        sha = (await put(attacker, "platformio.ini", ini.encode()))["sha256"]
        params = {"port": "echo.local", "env": "x", "source": "fw.bin", "files": [fw], "ini": sha}
        async with attacker.open_call("upload.flash", **params) as call:
            with trio.fail_after(5):
                devices = await victim.call("device.list")
            with trio.fail_after(5), pytest.raises(RemoteError) as err:
                await wait_result(call)
    assert isinstance(devices, (list, dict))
    assert str(err.value).startswith("platformio.ini: [env:x] l")
    assert "references expand to more than 65536 characters" in str(err.value)


async def test_remote_test_build_and_its_flash_run_only_the_agents_own_ini(site, tmp_path):
    """Attacker syncs a project for `test -r` with [DEFAULT]/extra_script options -> neither
    `pio test` nor the flash of the suite it built is handed them."""
    from pio_remote.client.upload import sync_project

    project = make_project(
        tmp_path / "proj",
        "extra_script = lib/plat/evil.py\ntest_framework = unity\ncustom = -DC=1\n"
        "build_flags = ${env:dev.custom}\ntest_ignore = test_io\n"
        "[env:bad]\nplatform = symlink://lib/plat\n",
    )
    (project / "test" / "test_math").mkdir(parents=True)
    (project / "test" / "test_math" / "test_main.c").write_text("void setUp(void) {}\n")
    async with site.connect() as client, client.session("lab-pi") as agent:
        synced = await sync_project(agent, project)
        async with agent.open_call(
            "test.build", project=synced.project, env="dev", suite="test_math"
        ) as call:
            built = await wait_result(call)
        assert built["exit_code"] == 0
        with pytest.raises(RemoteError, match=r"^platformio.ini: option platform: 'symlink:"):
            await agent.call("test.build", project=synced.project, env="bad", suite="test_math")
        flashed = await agent.call(
            "upload.flash",
            port="ota.local",
            env="dev",
            source=built["source"],
            files=built["files"],
            ini=built["ini"],
        )
    assert flashed["exit_code"] == 0
    test_ini, flash_ini = site.inis()
    for written in (test_ini, flash_ini):
        assert not any(word in written for word in FORBIDDEN)
        assert "build_flags = -DC=1\n" in written and "test_framework = unity\n" in written
