"""`pio-remote run -t upload` through a real relay and agent (issue: upload).

One agent per test, configured with several [[uploader]] entries, each for its
own port glob: the virtual board farm, a slow uploader (to interrupt), a
failing one, and one for OTA names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest
import serial
import trio
from conftest import PY, Env, Proc
from monitorkit import MonitorProc
from proctools import wait_gone

from pio_remote.client.api import Client, RemoteError, wait_result
from pio_remote.vboard import FIRMWARE_V1, FIRMWARE_V2, BoardFarm

SLOW_UPLOADER = """\
import os, subprocess, sys, time
port, source, state = sys.argv[1], sys.argv[2], sys.argv[3]
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(state + "/pids", "w") as fh:
    fh.write(f"{os.getpid()} {child.pid}")
if os.path.exists(state + "/fast"):
    print("quick upload to", port, flush=True)
    child.kill()
    sys.exit(0)
print("flashing", os.path.getsize(source), "bytes to", port, flush=True)
time.sleep(60)
"""


class Lab:
    def __init__(self, world, tmp: Path):
        self.world = world
        self.tmp = tmp
        self.agent_machine = world.machine("lab", "alice")
        self.desk = world.machine("desk", "alice")
        self.state = tmp / "state"
        self.state.mkdir()
        script = tmp / "slow_uploader.py"
        script.write_text(SLOW_UPLOADER)
        self.agent_toml = f"""
max_upload_bytes = 1048576

[[uploader]]
ports = "{tmp}/vb/*"
command = "{PY} -m pio_remote.vboard upload $UPLOAD_PORT $SOURCE"

[[uploader]]
ports = "slow-*"
command = "{PY} {script} $UPLOAD_PORT $SOURCE {self.state}"

[[uploader]]
ports = "fail-*"
command = "sh -c 'echo uploader says no; exit 3'"

[[uploader]]
ports = "*.local"
command = "{PY} -c 'import sys; print(\\"OTA to\\", sys.argv[1:])' $UPLOAD_PORT $UPLOAD_SPEED"
"""
        (self.agent_machine.home / "agent.toml").write_text(self.agent_toml)
        self.agent: Proc | None = None

    def start(self, *args: str, **env: str) -> Proc:
        self.agent_machine.extra.update(env)
        self.agent = self.world.start_agent(self.agent_machine, "lab-pi", *args)
        self.world.pair(self.agent_machine, self.desk, "lab-pi")
        return self.agent

    @property
    def work(self) -> Path:
        return self.agent_machine.home / "work"

    def leftovers(self) -> list[str]:
        """Temp files in the cache and job directories left on the agent."""
        found = [p.name for p in (self.work / "cache").glob(".*")]
        jobs = self.work / "jobs"
        found += [p.name for p in jobs.iterdir()] if jobs.exists() else []
        return found

    def run(self, *args: str, check: bool = False, **kw):
        return self.desk.cli("-a", "lab-pi", "run", *args, check=check, **kw)

    def connect(self):
        return Client.connect(
            self.world.relay.url, self.world.tokens["alice"], home_path=self.desk.home
        )


@pytest.fixture
def lab(world, tmp_path):
    return Lab(world, tmp_path)


def read_banner(port: str, timeout: float = 10.0) -> bytes:
    """Opening the port resets the board; read until its banner line is complete."""
    deadline = time.monotonic() + timeout
    buf = b""
    with serial.Serial(port, 115200, timeout=0.5) as ser:
        while b"firmware v" not in buf or not buf.endswith(b"\n"):
            if time.monotonic() > deadline:
                raise AssertionError(f"no banner from {port}: {buf!r}")
            buf += ser.read(max(1, ser.in_waiting))
    return buf


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm missing")
def test_upload_flashes_virtual_board_and_second_upload_comes_from_cache(lab, tmp_path):
    with BoardFarm(tmp_path / "vb", count=1, firmware=FIRMWARE_V1) as farm:
        lab.start("--port-glob", str(tmp_path / "vb" / "*"))
        assert b"firmware v1" in read_banner(farm.port(0))

        first = lab.run(
            "-t", "upload", "--firmware", str(FIRMWARE_V2), "--upload-port", farm.port(0)
        )
        assert first.returncode == 0, first.stderr
        assert "Uploading blink-v2.elf to board0" in first.stdout  # the uploader's own output
        size = FIRMWARE_V2.stat().st_size
        assert f"sent {size} B (1 file(s)), 0 file(s) already there" in first.stderr
        assert b"pio-remote vboard firmware v2" in read_banner(farm.port(0))

        # Back to v1, then v2 again: now v2 comes out of the agent's cache.
        assert (
            lab.run(
                "-t", "upload", "--firmware", str(FIRMWARE_V1), "--upload-port", farm.port(0)
            ).returncode
            == 0
        )
        again = lab.run(
            "-t", "upload", "--firmware", str(FIRMWARE_V2), "--upload-port", farm.port(0)
        )
        assert again.returncode == 0, again.stderr
        assert "sent 0 B (0 file(s)), 1 file(s) already there" in again.stderr
        assert b"pio-remote vboard firmware v2" in read_banner(farm.port(0))
    assert lab.leftovers() == []


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm missing")
def test_an_upload_pauses_a_monitor_and_it_resumes_on_the_new_firmware(
    lab, tmp_path, serial_backend
):
    """The agent's monitor lets go of the port (on the thread backend: its handle is
    closed before the uploader starts), then reopens it for the new banner."""
    with BoardFarm(tmp_path / "vb", count=1, firmware=FIRMWARE_V1) as farm:
        lab.start("--port-glob", str(tmp_path / "vb" / "*"))
        monitor = MonitorProc(
            lab.desk, ["-a", "lab-pi", "device", "monitor", "-p", farm.port(0), "-b", "115200"]
        )
        lab.world.procs.append(monitor)
        monitor.wait_for(b"Terminal on lab-pi", err=True)
        upload = lab.run(
            "-t", "upload", "--firmware", str(FIRMWARE_V2), "--upload-port", farm.port(0)
        )
        assert upload.returncode == 0, upload.stderr
        monitor.wait_for(b"paused: upload by", err=True)
        monitor.wait_for(b"pio-remote vboard firmware v2", timeout=20)
        monitor.close_stdin()
        assert monitor.wait() == 0


async def test_agent_rejects_a_file_whose_sha256_does_not_match(lab):
    lab.start()
    good, evil = b"A" * 5000, b"B" * 5000
    async with lab.connect() as client, client.session("lab-pi") as agent:
        sha = hashlib.sha256(good).hexdigest()
        async with agent.open_call("upload.put", name="fw.bin", size=len(evil), sha256=sha) as call:
            await call.send(evil)
            await call.send_eof()
            with pytest.raises(RemoteError, match="SHA-256 is .* not the announced") as err:
                await wait_result(call)
        assert err.value.code == "sha256_mismatch"

        # More bytes than announced: stopped as soon as they arrive.
        async with agent.open_call("upload.put", name="fw.bin", size=10, sha256=sha) as call:
            await call.send(good[:11])
            with pytest.raises(RemoteError, match="more than the announced 10 bytes"):
                await wait_result(call)

        # Over max_upload_bytes: refused before a byte is sent, naming size and limit.
        with pytest.raises(RemoteError, match=r"2000000 bytes .* limit of 1048576 bytes"):
            await agent.call(
                "upload.check", files=[{"name": "big.bin", "size": 2_000_000, "sha256": sha}]
            )
        assert (
            await agent.call(
                "upload.check", files=[{"name": "fw.bin", "size": len(good), "sha256": sha}]
            )
        )["missing"] == [sha]

        # An interrupted transfer (the client leaves the call) leaves no temp file either.
        async with agent.open_call("upload.put", name="fw.bin", size=len(good), sha256=sha) as call:
            await call.send(good[:1000])
            with trio.fail_after(5):
                while not lab.leftovers():  # the agent is writing its temp file...
                    await trio.sleep(0.02)
    with trio.fail_after(5):
        while lab.leftovers():  # ...and removes it once the call is cancelled
            await trio.sleep(0.05)
    assert [p.name for p in (lab.work / "cache").iterdir()] == []


def test_uploader_exit_code_ota_names_and_unknown_ports(lab, tmp_path):
    lab.start()
    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"\x00" * 100)
    result = lab.run("-t", "upload", "--firmware", str(fw), "--upload-port", "fail-board0")
    assert result.returncode == 3, result.stderr  # the uploader's exit code
    assert "uploader says no" in result.stdout
    assert "uploader exited with 3" in result.stderr

    result = lab.run("-t", "upload", "--firmware", str(fw), "--upload-port", "esp-lab.local")
    assert result.returncode == 0, result.stderr
    assert "OTA to ['esp-lab.local', '']" in result.stdout  # passed on unchanged
    # The agent answered that it had the file already: nothing was sent the second time.
    assert "sent 0 B (0 file(s)), 1 file(s) already there" in result.stderr

    result = lab.run("-t", "upload", "--firmware", str(fw), "--upload-port", "/dev/sda")
    assert result.returncode == 1
    assert "port /dev/sda is not offered by agent 'alice/lab-pi'" in result.stderr


def test_ctrl_c_kills_the_uploader_group_and_frees_the_port(lab, tmp_path):
    lab.start()
    fw = tmp_path / "fw.bin"
    fw.write_bytes(os.urandom(4096))
    port = "slow-board0"  # a name the slow [[uploader]] claims
    upload = [PY, "-m", "pio_remote", "-a", "lab-pi", "run", "-t", "upload"]
    upload += ["--firmware", str(fw), "--upload-port", port]

    def start_slow_upload() -> tuple[Proc, int, int]:
        """A client flashing through the slow uploader, and the uploader's two pids."""
        client = Proc(upload, lab.desk.env)
        lab.world.procs.append(client)
        client.wait_for("flashing 4096 bytes to")
        leader, child = map(int, (lab.state / "pids").read_text().split())
        return client, leader, child

    client, leader, child = start_slow_upload()
    assert psutil.pid_exists(leader) and psutil.pid_exists(child)
    os.kill(client.popen.pid, signal.SIGINT)
    assert client.popen.wait(timeout=10) == 130

    assert wait_gone([leader, child], timeout=10), "uploader process group survived"
    assert lab.leftovers() == []

    # A lost connection (the client killed outright) ends the upload the same way.
    client, leader, child = start_slow_upload()
    client.popen.kill()
    assert wait_gone([leader, child], timeout=10), "uploader survived a lost connection"

    (lab.state / "fast").touch()  # the same port again: not locked any more
    again = lab.run("-t", "upload", "--firmware", str(fw), "--upload-port", port)
    assert again.returncode == 0, again.stderr
    assert f"quick upload to {port}" in again.stdout
    assert lab.leftovers() == []


def make_project(root: Path, extra_env: str = "") -> Path:
    (root / "src").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "lib" / "blinky").mkdir(parents=True)
    (root / "platformio.ini").write_text(
        "[platformio]\ndefault_envs = dev\n\n[env:dev]\nplatform = ststm32\nboard = fake\n"
        "upload_speed = 115200\n" + extra_env
    )
    (root / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (root / "include" / "board.h").write_text("#define LED 13\n")
    (root / "lib" / "blinky" / "blinky.c").write_text("void blink(void) {}\n")
    return root


def test_client_upload_command_is_refused_unless_the_owner_allows_it(lab, tmp_path):
    marker = tmp_path / "client-command-ran"
    # Allowed, it runs in the sandbox: it may print, and write only in its job directory.
    project = make_project(
        tmp_path / "proj",
        "upload_protocol = custom\n"
        f'upload_command = {PY} -c \'import sys; open(sys.argv[1], "w").write(sys.argv[2]); '
        f'print("client command flashed", sys.argv[2])\' {marker} $SOURCE\n',
    )
    build = project / ".pio" / "build" / "dev"
    build.mkdir(parents=True)
    (build / "firmware.bin").write_bytes(b"\x02" * 256)
    lab.start()
    result = lab.run("-d", str(project), "-t", "upload")
    assert result.returncode == 1
    assert "does not run upload commands sent by clients" in result.stderr
    assert "pio-remote agent start --allow-client-commands" in result.stderr
    assert not marker.exists()

    result = lab.run("-d", str(project), "-r", "-t", "upload")
    assert result.returncode == 1
    assert "does not build clients' projects" in result.stderr

    lab.agent.stop()
    lab.start("--allow-client-commands")
    result = lab.run("-d", str(project), "-t", "upload")
    assert result.returncode == 0, result.stderr
    assert "client command flashed" in result.stdout
    assert result.stdout.strip().endswith("/.pio/build/dev/firmware.bin")
    assert not marker.exists()  # outside its job: the sandbox hides it


def test_missing_artifact_names_the_file_and_build_command(tmp_path):
    project = make_project(tmp_path / "proj")
    offline = Env(
        tmp_path / "home",
        {"PIO_REMOTE_RELAY": "ws://127.0.0.1:9", "PIO_REMOTE_AUTH_TOKEN": "unused"},
    )
    offline.home.mkdir()
    result = offline.cli("run", "-d", str(project), "-t", "upload", check=False)
    assert result.returncode == 2  # ProjectError: fix the project, then try again
    assert "firmware.bin is missing: build it with 'pio run -e dev" in result.stderr


FAKE_PIO = """\
#!{py}
import json, os, sys
args = sys.argv[1:]
with open({log!r}, "a") as fh:
    fh.write(json.dumps(args) + "\\n")
d = args[args.index("-d") + 1]
env = args[args.index("-e") + 1]
if "nobuild" not in args:
    build = os.path.join(d, ".pio", "build", env)
    os.makedirs(build, exist_ok=True)
    with open(os.path.join(build, "firmware.bin"), "wb") as fh:
        fh.write(open(os.path.join(d, "src", "main.c"), "rb").read())
    print("fake pio built", env, "from", sorted(os.listdir(os.path.join(d, "src"))))
else:
    print("fake pio uploaded", env)
"""


def test_force_remote_syncs_only_what_changed(lab, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "pio.log"
    pio = bindir / "pio"
    pio.write_text(FAKE_PIO.format(py=PY, log=str(log)))
    pio.chmod(0o755)
    # The fake pio logs outside its job, so this sync test runs it unsandboxed.
    toml = 'allow_remote_build = true\nremote_build_sandbox = "none"\n' + lab.agent_toml
    (lab.agent_machine.home / "agent.toml").write_text(toml)
    lab.start(PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    project = make_project(tmp_path / "proj", "extra_scripts = pre:evil.py\n")

    first = lab.run("-d", str(project), "-r", "-t", "upload")
    assert first.returncode == 0, first.stderr
    assert "syncing 4 changed file(s)" in first.stderr
    assert "fake pio built dev from ['main.c']" in first.stdout
    assert "fake pio uploaded dev" in first.stdout

    (project / "src" / "main.c").write_text("int main(void) { return 1; }\n")
    (project / "include" / "board.h").unlink()
    second = lab.run("-d", str(project), "-r", "-t", "upload")
    assert second.returncode == 0, second.stderr
    size = (project / "src" / "main.c").stat().st_size
    assert f"syncing 1 changed file(s) ({size} B), removing 1" in second.stderr
    assert f"(1 updated, 1 removed, 2 unchanged; sent {size} B)" in second.stderr

    calls = [json.loads(line) for line in log.read_text().splitlines()]
    remote_dir = calls[0][2]
    build = ["run", "-d", remote_dir, "-e", "dev"]
    upload = [*build, "-t", "nobuild", "-t", "upload", "--disable-auto-clean"]
    assert calls == [build, upload, build, upload]
    remote = Path(remote_dir)
    assert not (remote / "include" / "board.h").exists()
    assert "extra_scripts" not in (remote / "platformio.ini").read_text()
    assert (remote / ".pio" / "build" / "dev" / "firmware.bin").read_bytes() == (
        project / "src" / "main.c"
    ).read_bytes()


def test_device_list_mdns_shows_loopback_services(lab):
    from zeroconf import ServiceInfo, Zeroconf

    lab.start(PIO_REMOTE_MDNS_INTERFACES="127.0.0.1")
    zc = Zeroconf(interfaces=["127.0.0.1"])
    info = ServiceInfo(
        "_arduino._tcp.local.",
        "esp-lab._arduino._tcp.local.",
        addresses=[bytes([127, 0, 0, 1])],
        port=3232,
        properties={"board": "esp32"},
        server="esp-lab.local.",
    )
    zc.register_service(info)
    try:
        result = lab.desk.cli("-a", "lab-pi", "device", "list", "--mdns", "--json-output")
    finally:
        zc.unregister_service(info)
        zc.close()
    services = json.loads(result.stdout)["lab-pi"]
    assert {
        "type": "_arduino._tcp.local.",
        "name": "esp-lab._arduino._tcp.local.",
        "ip": "127.0.0.1",
        "port": 3232,
        "properties": {"board": "esp32"},
    } in services
