"""Remote builds are the client's code: opt-in, and sandboxed, against real PlatformIO Core.

Each test runs a real relay, agent and client, and the agent builds with real
PlatformIO Core (tests/piocore.py: an offline core directory and a platform that
builds with the host's gcc). The attacks are the ways a client's project runs
its own code during a PlatformIO build; whatever PlatformIO does with each, the
code must not reach outside bwrap's sandbox: no file written in the agent's home
or a directory outside the job, no byte of the agent's identity key sent back,
no TCP connection out.
"""

from __future__ import annotations

import json
import select
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import piocore
import psutil
import pytest

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap missing")

PAYLOAD = """\
import socket
for path in {markers!r}:
    try:
        with open(path, "w") as fh:
            fh.write("escaped")
    except OSError as exc:
        print("payload could not write", path, exc)
try:
    with open({key!r}) as fh:
        print("payload read the key:", fh.read())
except OSError as exc:
    print("payload could not read the key", exc)
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
    print("payload connected")
except OSError as exc:
    print("payload could not connect", exc)
print("payload ran")
"""
MAIN = "int main(void) { return 0; }\n"
# PlatformIO's Unity would come from its registry: a custom runner keeps `test -r` offline.
RUNNER = """\
from platformio.public import TestRunnerBase


class CustomTestRunner(TestRunnerBase):
    pass
"""


def add_suite(project: Path) -> None:
    """test/test_a for `test -r` (src/main.c again: PlatformIO does not build src for tests),
    with the custom (offline) test framework."""
    (project / "test" / "test_a").mkdir(parents=True)
    (project / "test" / "test_a" / "test_main.c").write_text((project / "src/main.c").read_text())
    (project / "test" / "test_custom_runner.py").write_text(RUNNER)
    ini = project / "platformio.ini"
    ini.write_text(ini.read_text() + "test_framework = custom\n")


class Bench:
    """A relay, an agent with real PlatformIO and remote builds allowed, a paired desk."""

    def __init__(self, world, tmp: Path, platformio: piocore.PlatformIO):
        self.world = world
        self.tmp = tmp
        self.machine = world.machine("lab", "alice")
        self.machine.extra.update(platformio.env)
        self.desk = world.machine("desk", "alice")
        self.outside = tmp / "outside"
        self.outside.mkdir()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.agent = None

    @property
    def board(self) -> str:
        return str(self.tmp / "vb" / "board0")

    @property
    def key(self) -> Path:
        return self.machine.home / "identity.key"

    @property
    def markers(self) -> list[Path]:
        return [self.machine.home / "escaped", self.outside / "escaped"]

    def start(
        self, toml: str = "allow_remote_build = true\n", uploader: bool = True, **env: str
    ) -> None:
        """The agent; its one board (a demo board on a pty) is flashed by a no-op uploader."""
        boards = self.tmp / "vb"
        if not boards.exists():
            boards.mkdir()
            self.world.board(boards / "board0")
        noop = f'[[uploader]]\nports = "{boards}/*"\ncommand = "/bin/true $SOURCE"\n'
        uploader = noop if uploader else ""
        (self.machine.home / "agent.toml").write_text(toml + uploader)
        self.machine.extra.update(env)
        glob = ["--port-glob", f"{boards}/*"]
        self.agent = self.world.start_agent(self.machine, "lab-pi", *glob)
        self.world.pair(self.machine, self.desk, "lab-pi")

    def payload(self) -> str:
        markers = [str(m) for m in self.markers]
        port = self.listener.getsockname()[1]
        return PAYLOAD.format(markers=markers, key=str(self.key), port=port)

    def run(self, project: Path, *args: str, timeout: float = 120):
        return self.desk.cli(
            "-a", "lab-pi", "run", "-d", str(project), "-r", *args, check=False, timeout=timeout
        )

    def test(self, project: Path, *args: str, timeout: float = 120):
        return self.desk.cli(
            "-a", "lab-pi", "test", "-d", str(project), "-r", *args, check=False, timeout=timeout
        )

    def assert_contained(self, result) -> None:
        """Nothing the payload tried reached outside the sandbox."""
        for marker in self.markers:
            assert not marker.exists(), f"the build wrote {marker}"
        key = self.key.read_text().strip()
        for text in (result.stdout, result.stderr):
            assert key not in text.lower() and key[:16] not in text.lower()
        readable, _, _ = select.select([self.listener], [], [], 0)
        assert not readable, "the build connected to 127.0.0.1"


@pytest.fixture
def bench(world, tmp_path, platformio) -> Iterator[Bench]:
    b = Bench(world, tmp_path, platformio)
    try:
        yield b
    finally:
        b.listener.close()


def attack_project(bench: Bench, variant: str) -> Path:
    """The client's project for one way of running its code in a PlatformIO build."""
    root = bench.tmp / "proj"
    payload = bench.payload()
    files = {"include/payload.py": payload}  # -r syncs platformio.ini, src, include, lib, test
    main, ini, head = MAIN, "", ""
    if variant == "default_extra_scripts":
        head = "[DEFAULT]\nextra_scripts = include/payload.py\n\n"
    elif variant == "bang_build_flag":
        ini = f"build_flags = -DX, !{sys.executable} include/payload.py\n"
    elif variant == "extra_script":
        ini = "extra_script = include/payload.py\n"
    elif variant == "library_extra_script":
        manifest = {"name": "x", "version": "1.0.0", "build": {"extraScript": "payload.py"}}
        files["lib/x/library.json"] = json.dumps(manifest)
        files["lib/x/payload.py"] = payload
        files["lib/x/x.h"] = "int x(void);\n"
        files["lib/x/x.c"] = "int x(void) { return 1; }\n"
        main = '#include "x.h"\nint main(void) { return x(); }\n'
    elif variant == "bang_after_interpolation":
        ini = f"custom_flags = !{sys.executable} include/payload.py\n"
        ini += "build_flags = ${env:dev.custom_flags}\n"
    elif variant == "include_identity_key":
        main = f'#include "{bench.key}"\n' + MAIN
    else:
        raise AssertionError(variant)
    project = piocore.project(root, main, ini, files)
    if head:
        ini_path = project / "platformio.ini"
        ini_path.write_text(head + ini_path.read_text())
    return project


VARIANTS = [
    "default_extra_scripts",
    "bang_build_flag",
    "extra_script",
    "library_extra_script",
    "bang_after_interpolation",
    "include_identity_key",
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_run_r_attack_stays_in_the_sandbox(bench, variant):
    # The agent's platformio.ini drops `!command` flags unless client commands are
    # allowed (iniwriter); allow them here so the payload reaches the sandbox.
    bench.start(toml="allow_remote_build = true\nallow_client_commands = true\n")
    project = attack_project(bench, variant)
    result = bench.run(project, "-v")
    assert "building environment dev" in result.stderr, result.stderr
    bench.assert_contained(result)


@pytest.mark.parametrize("variant", ["library_extra_script", "include_identity_key"])
def test_test_r_attack_stays_in_the_sandbox(bench, variant):
    bench.start()
    project = attack_project(bench, variant)
    add_suite(project)
    result = bench.test(project, "-v", "--without-testing")
    assert "Processing test_a in dev environment" in result.stdout, result.stdout + result.stderr
    bench.assert_contained(result)


RELINK = """\
import os
from SCons.Script import DefaultEnvironment

project = DefaultEnvironment().subst("$PROJECT_DIR")
for name in ("platformio.ini", ".pio-remote-client.ini"):
    path = os.path.join(project, name)
    if os.path.lexists(path):
        os.remove(path)
        os.symlink({key!r}, path)
print("relinked", flush=True)
"""


@pytest.mark.parametrize("command", ["run", "test"])
def test_files_the_build_relinks_are_not_read_through(bench, command):
    """The build replaces the project's platformio.ini files with links to the agent's key:
    the agent, outside the sandbox, must not read (and echo) it when the build is over."""
    bench.start()
    manifest = {"name": "x", "version": "1.0.0", "build": {"extraScript": "relink.py"}}
    main = '#include "x.h"\nint main(void) { return x(); }\n'
    project = piocore.project(
        bench.tmp / "proj",
        main,
        files={
            "lib/x/library.json": json.dumps(manifest),
            "lib/x/relink.py": RELINK.format(key=str(bench.key)),
            "lib/x/x.h": "int x(void);\n",
            "lib/x/x.c": "int x(void) { return 1; }\n",
        },
    )
    if command == "test":
        add_suite(project)
    for again in (False, True):  # the second run finds the links the first build left
        if command == "run":
            result = bench.run(project, "-v", "-t", "upload", "--upload-port", bench.board)
        else:
            result = bench.test(project, "-v", "--without-testing")
        assert result.returncode != 0
        if not again or command == "run":  # test -r's second build fails in the sandbox
            out = result.stdout + result.stderr
            assert "is a symlink or not a directory: refused" in out, out
        bench.assert_contained(result)


def test_a_legitimate_remote_build_succeeds_with_real_platformio(bench):
    bench.start()
    project = piocore.project(
        bench.tmp / "proj",
        '#include "x.h"\nint main(void) { return x(); }\n',
        "build_flags = -DANSWER=42\n",
        {"lib/x/x.h": "int x(void);\n", "lib/x/x.c": "int x(void) { return ANSWER; }\n"},
    )
    result = bench.run(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[SUCCESS]" in result.stdout
    add_suite(project)
    tested = bench.test(project, "--without-testing")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "test_a on lab-pi:" in tested.stderr and "PASSED (no cases)" in tested.stderr
    [built] = (bench.machine.home / "work" / "projects").glob("*/*/.pio/build/dev/firmware.bin")
    assert built.stat().st_size > 0


def test_remote_build_is_refused_unless_the_owner_allows_it(bench):
    bench.start(toml="")
    project = piocore.project(bench.tmp / "proj", MAIN)
    add_suite(project)
    for result in (bench.run(project), bench.test(project, "--without-testing")):
        assert result.returncode != 0
        [line] = [x for x in result.stderr.splitlines() if "does not build" in x]
        assert "agent 'alice/lab-pi' does not build clients' projects (run -r and test -r" in line
        assert "allow_remote_build = true in agent.toml" in line
        assert "Traceback" not in result.stderr
    assert not list((bench.machine.home / "work").glob("projects/*/*/src"))  # nothing synced


def _path_without_bwrap(tmp: Path) -> str:
    """/usr/bin and /bin as links, minus bwrap, plus the venv (PlatformIO)."""
    bindir = tmp / "nobwrap"
    bindir.mkdir()
    for d in ("/usr/bin", "/bin"):
        for exe in Path(d).iterdir():
            if exe.name != "bwrap" and not (bindir / exe.name).exists():
                (bindir / exe.name).symlink_to(exe)
    return f"{piocore.VENV_BIN}:{bindir}"


def test_without_bwrap_remote_builds_are_refused_unless_sandbox_none(bench):
    bench.start(PATH=_path_without_bwrap(bench.tmp))
    project = piocore.project(bench.tmp / "proj", MAIN)
    result = bench.run(project)
    assert result.returncode != 0
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("Error: agent lab-pi: agent 'alice/lab-pi' cannot sandbox the client")
    assert "apt install bubblewrap" in last and 'remote_build_sandbox = "none"' in last

    bench.agent.stop()
    bench.start(toml='allow_remote_build = true\nremote_build_sandbox = "none"\n')
    result = bench.run(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[SUCCESS]" in result.stdout


SPIN = "import time\nprint('spinning', flush=True)\nwhile True:\n    {body}\n"


@pytest.mark.parametrize(
    ("limit", "body", "line"),
    [
        (
            "remote_build_timeout = 10\n",
            "time.sleep(1)",
            "stopped: it ran longer than 10 s (remote_build_timeout",
        ),
        (
            "remote_build_cpu_seconds = 2\n",
            "pass",
            "stopped: it used more than 2 s of CPU time (remote_build_cpu_seconds",
        ),
    ],
)
def test_a_build_over_its_limit_is_killed_with_one_line(bench, limit, body, line):
    bench.start(toml="allow_remote_build = true\n" + limit)
    spin = SPIN.format(body=body)
    manifest = {"name": "x", "version": "1.0.0", "build": {"extraScript": "spin.py"}}
    project = piocore.project(
        bench.tmp / "proj",
        '#include "x.h"\nint main(void) { return x(); }\n',
        files={
            "lib/x/library.json": json.dumps(manifest),
            "lib/x/spin.py": spin,
            "lib/x/x.h": "int x(void);\n",
            "lib/x/x.c": "int x(void) { return 1; }\n",
        },
    )
    result = bench.run(project, "-v", timeout=90)
    assert "spinning" in result.stdout  # the build did reach the client's code
    assert result.returncode != 0
    last = [x for x in result.stderr.splitlines() if x.strip()][-1]
    assert last == f"Error: agent lab-pi: the remote build of dev {line} in the agent's agent.toml)"
    left = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "spin.py" in " ".join(p.info["cmdline"] or [])
    ]
    assert not left


CLIENT_COMMAND = """\
import os, select, sys, time
{payload}
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
os.write(fd, b"ping-from-the-sandbox\\n")
got, deadline = b"", time.monotonic() + 10
while b"ping-from-the-sandbox" not in got and time.monotonic() < deadline:
    if select.select([fd], [], [], 1)[0]:
        got += os.read(fd, 4096)
print("board echoed:", b"ping-from-the-sandbox" in got)
"""


def test_an_allowed_client_command_gets_its_port_and_nothing_else(bench):
    """allow_client_commands: the project's upload_command runs sandboxed, with its port."""
    bench.start(toml="allow_client_commands = true\n", uploader=False)
    script = CLIENT_COMMAND.format(payload=bench.payload()).encode().hex()
    command = f"{sys.executable} -c 'exec(bytes.fromhex(\"{script}\"))' $UPLOAD_PORT"
    project = piocore.project(
        bench.tmp / "proj", MAIN, f"upload_protocol = custom\nupload_command = {command}\n"
    )
    build = project / ".pio" / "build" / "dev"
    build.mkdir(parents=True)
    (build / "firmware.bin").write_bytes(b"\x01" * 64)
    result = bench.desk.cli(
        *("-a", "lab-pi", "run", "-d", str(project), "-t", "upload", "--upload-port", bench.board),
        check=False,
    )
    assert "uploading with PlatformIO Core on the agent" in result.stderr, result.stderr
    bench.assert_contained(result)
    assert "board echoed: True" in result.stdout, result.stdout + result.stderr


def test_a_missing_package_is_named_in_one_line_without_waiting_for_the_network(bench):
    bench.start()
    project = piocore.project(bench.tmp / "proj", MAIN, "lib_deps = bblanchon/ArduinoJson\n")
    result = bench.run(project, timeout=60)
    assert result.returncode != 0
    [line] = [x for x in result.stderr.splitlines() if x.startswith("Error:")]
    assert line == (
        "Error: agent lab-pi: the remote build of dev needs bblanchon/ArduinoJson, which is not "
        "installed on the agent, and remote builds have no network: the agent's owner installs "
        "it beforehand ('pio pkg install -g ...' as the agent's user), or build locally and "
        "run without -r"
    )
