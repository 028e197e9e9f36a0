"""The single-file builds from zipapp.spec: the native one runs a whole relay + agent +
client flow under `python3 -I`, and the aarch64 one runs for real under qemu-user
with Debian's arm64 CPython, talking to an x86_64 relay and client.

Archives are built once per test session (building takes CPU; the tests that use them
share them)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, Env, Proc

from pio_remote import onefile

BUILD = ROOT / "scripts" / "build-zipapp"
EM_AARCH64, EM_X86_64 = 183, 62


def _build(out_dir: Path, *args: str) -> list[Path]:
    result = subprocess.run(
        [sys.executable, str(BUILD), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    built = [
        Path(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("built ")
    ]
    moved = []
    for path in built:
        moved.append(out_dir / path.name)
        shutil.move(path, moved[-1])
    return moved


@pytest.fixture(scope="session")
def native_pyz(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pyz-native")
    (pyz,) = _build(out, "--output", str(out / "built.pyz"))
    return pyz


@pytest.fixture(scope="session")
def aarch64_pyzs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("pyz-aarch64")
    built = _build(out, "--target", "linux-aarch64")
    return {path.stem.rsplit("-", 1)[1]: path for path in built}


# Debian's mirrors answer "Hash Sum mismatch" or 404 for a few minutes while they
# sync: the sysroot fetch is tried this many times, waiting BACKOFF s, then twice
# that, ... between tries (3 tries: at most 10 + 20 s of waiting).
SYSROOT_TRIES = 3
SYSROOT_BACKOFF = 10.0
# scripts/debian-sysroot's exit codes that no retry can change: bad usage, no apt-get.
SYSROOT_FINAL_CODES = (2, 3)


def _last_error(stderr: str) -> str:
    """apt's own error line (``E: ...``) if there is one, else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("E:", "Err:"))]
    return (errors or lines or ["no error output"])[-1][:300]


def fetch_sysroot(
    argv: list[str], tries: int = SYSROOT_TRIES, backoff: float = SYSROOT_BACKOFF
) -> tuple[str | None, str]:
    """Run the sysroot script until it succeeds, at most ``tries`` times.

    Returns (sysroot path, "") or (None, one line saying what failed, how often).
    """
    why = ""
    for attempt in range(1, tries + 1):
        try:
            setup = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            why = "timed out after 600 s"
        else:
            if setup.returncode == 0 and setup.stdout.strip():
                return setup.stdout.strip().splitlines()[-1], ""
            why = f"exit {setup.returncode}: {_last_error(setup.stderr)}"
            if setup.returncode in SYSROOT_FINAL_CODES:
                return None, f"{Path(argv[0]).name} {why}"
        if attempt < tries:
            time.sleep(backoff * 2 ** (attempt - 1))
    name = Path(argv[0]).name
    return None, f"{name} failed {tries} times (Debian's mirror syncing?); last: {why}"


def _emulated_python(arch: str, qemu: str, cpu: str | None = None) -> list[str]:
    """argv prefix that runs Debian's ``arch`` python3.11 under qemu-user (as ``cpu``)."""
    machine = {"arm64": "aarch64", "armhf": "armv7l", "armel": "armv6l"}[arch]
    if shutil.which(qemu) is None:
        pytest.skip(f"{qemu} is missing (apt install qemu-user-static)")
    if platform.machine() == machine:
        pytest.skip(f"already on {machine}: the native test covers it")
    sysroot, why = fetch_sysroot([str(ROOT / "scripts" / "debian-sysroot"), arch])
    if sysroot is None:
        pytest.skip(f"cannot set up the {arch} sysroot: {why}")
    argv = [shutil.which(qemu) or qemu, *(["-cpu", cpu] if cpu else []), "-L", sysroot]
    argv += [f"{sysroot}/usr/bin/python3.11", "-I"]
    probe = subprocess.run([*argv, "-c", "import platform; print(platform.machine())"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    if probe.stdout.strip() != machine:
        pytest.skip(f"qemu-user cannot run the {arch} python: {probe.stderr.strip()[-500:]}")
    return argv


@pytest.fixture(scope="session")
def arm64_python() -> list[str]:
    return _emulated_python("arm64", "qemu-aarch64-static")


@pytest.fixture(scope="session")
def armhf_python() -> list[str]:
    """Debian's armhf python3.11 with Debian's python3-cryptography installed."""
    return _emulated_python("armhf", "qemu-arm-static")


@pytest.fixture(scope="session")
def armv7_pyz(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pyz-armv7")
    (pyz,) = _build(out, "--target", "linux-armv7", "--python", "3.11")
    return pyz


def _bare_env(tmp: Path, shiv_root: Path, **extra: str) -> dict[str, str]:
    """No venv, no PYTHONPATH: only what the archive carries."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "SHIV_ROOT": str(shiv_root), **extra}


def test_archives_are_named_for_platform_and_cpython(native_pyz, aarch64_pyzs):
    assert sorted(aarch64_pyzs) == ["cp311", "cp313"]
    for abi, path in aarch64_pyzs.items():
        assert path.name == f"pio-remote-0.1.0-linux-aarch64-{abi}.pyz"


def _elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF"
    return struct.unpack_from("<H", data, 18)[0]


@pytest.mark.parametrize("abi", ["cp311", "cp313"])
def test_aarch64_archive_holds_only_aarch64_code_for_its_abi(aarch64_pyzs, abi):
    with zipfile.ZipFile(aarch64_pyzs[abi]) as archive:
        libs = [n for n in archive.namelist() if n.endswith(".so") or ".so." in n]
        names = {n.rsplit("/", 1)[-1] for n in libs}
        assert any(n.startswith("_cffi_backend.") for n in names), "cffi must be bundled"
        assert any(n.startswith("_rust.abi3") for n in names), "cryptography must be bundled"
        for name in libs:
            base = name.rsplit("/", 1)[-1]
            assert "x86_64" not in base, name
            if ".cpython-" in base:
                assert f".cpython-{abi[2:]}-aarch64-linux-gnu.so" in base, name
            assert _elf_machine(archive.read(name)[:64]) == EM_AARCH64, name
        info = json.loads(archive.read("site-packages/pio_remote/_build.json"))
    assert info["platform"] == "linux-aarch64"
    assert info["python"] == f"3.{abi[3:]}"
    assert info["pythons"] == ["3.11", "3.13"]  # what a wrong Python is told to use instead


def test_native_archive_runs_relay_agent_and_client_isolated(native_pyz, tmp_path):
    """Everything from the one file under `python3 -I`: a relay, an agent serving a
    board, and a client that pairs with it and lists its ports."""
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    shiv = tmp_path / "shiv"

    def pyz(home: str, *args: str, **extra: str) -> list[str]:
        return [python, "-I", str(native_pyz), *args]

    def env(home: str, **extra: str) -> dict[str, str]:
        (tmp_path / home).mkdir(exist_ok=True)
        return _bare_env(tmp_path, shiv, PIO_REMOTE_HOME=str(tmp_path / home), **extra)

    def run(home: str, *args: str, **extra: str) -> str:
        result = subprocess.run(pyz(home, *args), env=env(home, **extra), capture_output=True,
                                text=True, timeout=120)  # fmt: skip
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout

    version = run("relay-home", "--version")
    assert f"single file for linux-{platform.machine()}" in version
    procs: list[Proc] = []
    try:
        relay = Proc([*pyz("relay-home", "relay", "serve", "--bind", "127.0.0.1:0",
                           "--data-dir", str(tmp_path / "data"))], env("relay-home"))  # fmt: skip
        procs.append(relay)
        url = relay.wait_for(r"relay listening on (ws://\S+)", timeout=60).group(1)
        token = run("relay-home", "relay", "user", "add", "ann", "--data-dir",
                    str(tmp_path / "data")).strip()  # fmt: skip
        creds = {"PIO_REMOTE_RELAY": url, "PIO_REMOTE_AUTH_TOKEN": token}
        board = Proc(
            [sys.executable, "-m", "pio_remote.vboard.demo_board", str(tmp_path / "vb" / "b0")],
            Env(tmp_path).env,
        )
        procs.append(board)
        board.wait_for("demo board")
        agent = Proc(
            pyz("pi", "agent", "start", "-n", "pi", "--port-glob", str(tmp_path / "vb" / "*")),
            env("pi", **creds),
        )
        procs.append(agent)
        agent.wait_for(r"agent ann/pi online", timeout=60)
        invite = run("pi", "agent", "invite", "-n", "pi", **creds).strip()
        run("desk", "agent", "pair", invite, **creds)
        devices = json.loads(run("desk", "-a", "pi", "device", "list", "--json-output", **creds))
        assert str(tmp_path / "vb" / "b0") in [d["port"] for d in devices["pi"]]
    finally:
        for proc in reversed(procs):
            proc.stop()


@pytest.mark.skipif(platform.machine() == "aarch64", reason="needs a machine it was not built for")
def test_aarch64_archive_version_on_another_machine_says_what_it_was_built_for(
    aarch64_pyzs, tmp_path
):
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    result = subprocess.run(
        [python, str(aarch64_pyzs["cp311"]), "--version"],
        env=_bare_env(tmp_path, tmp_path / "shiv"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "single file for linux-aarch64, CPython 3.11" in result.stdout
    assert f"this machine runs Linux on {platform.machine()}: use" in result.stderr


def test_aarch64_archive_reports_its_build_under_emulation(aarch64_pyzs, arm64_python, tmp_path):
    result = subprocess.run(
        [*arm64_python, str(aarch64_pyzs["cp311"]), "--version"],
        env=_bare_env(tmp_path, tmp_path / "shiv"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "single file for linux-aarch64, CPython 3.11" in result.stdout


def test_aarch64_agent_serves_an_x86_64_client_through_an_x86_64_relay(
    world, aarch64_pyzs, arm64_python, tmp_path
):
    """The agent runs on emulated aarch64 (its Noise and cffi are the arm64 wheels);
    relay and client are this machine's."""
    world.board(tmp_path / "vb" / "b0")
    pi = world.machine("pi", "zed")
    desk = world.machine("desk", "zed")
    agent = Proc(
        [*arm64_python, str(aarch64_pyzs["cp311"]), "agent", "start", "-n", "pi",
         "--port-glob", str(tmp_path / "vb" / "*")],
        _bare_env(tmp_path, tmp_path / "shiv", **{k: v for k, v in pi.env.items()
                                                 if k.startswith("PIO_REMOTE_")}),
    )  # fmt: skip
    world.procs.append(agent)
    agent.wait_for(r"agent zed/pi online", timeout=240)
    listed = json.loads(desk.cli("agent", "list", "--json-output").stdout)
    assert [a["name"] for a in listed] == ["pi"]
    # The invite is a file in the agent's home: this machine's CLI can write it.
    world.pair(pi, desk, "pi")
    devices = json.loads(desk.cli("-a", "pi", "device", "list", "--json-output").stdout)
    assert str(tmp_path / "vb" / "b0") in [d["port"] for d in devices["pi"]]


@pytest.mark.parametrize(
    ("machine", "python", "found", "expected"),
    [
        ("aarch64", "3.11", {}, None),
        ("aarch64", "3.13", {}, "Use pio-remote-*-linux-aarch64-cp313.pyz"),
        ("x86_64", "3.11", {}, "use pio-remote-*-linux-x86_64-cp311.pyz"),
        ("armv7l", "3.11", {}, "apt install python3-cryptography"),
    ],
)
def test_wrong_machine_or_python_is_named_at_start(machine, python, found, expected):
    targets = {"linux-x86_64": {"os": "Linux", "machines": ["x86_64"], "pythons": ["3.11"]},
               "linux-armv7": {"os": "Linux", "machines": ["armv7l"], "pythons": ["3.11"],
                               "from_system": True}}  # fmt: skip
    info = {"platform": "linux-aarch64", "python": "3.11", "machines": ["aarch64"],
            "targets": targets}  # fmt: skip
    why = onefile.problem(info, machine, python, found.get)
    assert why == expected if expected is None else expected in why


def test_armv7_archive_asks_for_the_system_cryptography_when_missing():
    info = {"platform": "linux-armv7", "python": "3.11", "machines": ["armv7l"],
            "from_system": ["cryptography", "_cffi_backend"]}  # fmt: skip
    assert onefile.problem(info, "armv7l", "3.11", {"cryptography": 1, "_cffi_backend": 1}.get) \
        is None  # fmt: skip
    why = onefile.problem(info, "armv7l", "3.11", {"cryptography": 1}.get)
    assert why.startswith("_cffi_backend cannot be loaded")
    assert "sudo apt install python3-cryptography" in why


def test_readme_single_file_section_is_what_the_build_makes(aarch64_pyzs):
    """The README's commands name a real target and the file that target produces."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The single-file agent", 1)[1]
    build, run = section.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()[:2]
    assert build.split("#")[0].split() == ["scripts/build-zipapp", "--target", "linux-aarch64"]
    assert run.split()[:2] == ["python3", aarch64_pyzs["cp311"].name]
    pi_copy = readme.split("in three commands", 1)[1].split("```sh\n", 1)[1].splitlines()[0]
    assert f"dist/{aarch64_pyzs['cp311'].name}" in pi_copy


def test_armv7_archive_carries_no_cffi_and_says_what_to_install(armv7_pyz, armhf_python, tmp_path):
    with zipfile.ZipFile(armv7_pyz) as archive:
        names = archive.namelist()
    assert not [n for n in names if "_cffi_backend" in n or "/cryptography/" in n]
    # -S hides the system's site-packages: as on a Pi without python3-cryptography.
    result = subprocess.run(
        [*armhf_python, "-S", str(armv7_pyz), "agent", "list"],
        env=_bare_env(tmp_path, tmp_path / "shiv"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert "cannot be loaded" in result.stderr
    assert "sudo apt install python3-cryptography" in result.stderr
    assert "Traceback" not in result.stderr


def test_armv7_agent_uses_the_system_cryptography(world, armv7_pyz, armhf_python, tmp_path):
    """32-bit ARM: the agent's Noise runs on Debian's python3-cryptography."""
    world.board(tmp_path / "vb" / "b0")
    pi = world.machine("pi", "zed")
    desk = world.machine("desk", "zed")
    creds = {k: v for k, v in pi.env.items() if k.startswith("PIO_REMOTE_")}
    agent = Proc(
        [*armhf_python, str(armv7_pyz), "agent", "start", "-n", "pi32",
         "--port-glob", str(tmp_path / "vb" / "*")],
        _bare_env(tmp_path, tmp_path / "shiv", **creds),
    )  # fmt: skip
    world.procs.append(agent)
    agent.wait_for(r"agent zed/pi32 online", timeout=240)
    world.pair(pi, desk, "pi32")
    devices = json.loads(desk.cli("-a", "pi32", "device", "list", "--json-output").stdout)
    assert str(tmp_path / "vb" / "b0") in [d["port"] for d in devices["pi32"]]


def test_a_failed_build_is_one_message_not_a_traceback(tmp_path):
    """Without PyPI (here: an index that refuses connections) the build says which step
    failed and why, and exits 1."""
    env = {**os.environ, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0",
           "PIP_TIMEOUT": "2", "PIP_FIND_LINKS": "", "PIP_NO_CACHE_DIR": "1"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, str(BUILD), "--target", "linux-aarch64", "--python", "3.13",
         "--output", str(tmp_path / "x.pyz")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("build-zipapp: ") and " failed (exit " in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.pyz").exists()


def _flaky_script(tmp_path: Path, failures: int, code: int = 100) -> list[str]:
    """A stand-in for scripts/debian-sysroot that fails ``failures`` times the way apt
    does during a mirror sync, then prints a sysroot path."""
    count = tmp_path / "count"
    script = tmp_path / "debian-sysroot"
    script.write_text(f"""#!/bin/sh
n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}
if [ "$n" -lt {failures} ]; then
    echo "W: Some index files failed to download." >&2
    echo "E: Failed to fetch http://deb.debian.org/debian/.../Packages.xz  Hash Sum mismatch" >&2
    exit {code}
fi
echo /tmp/arm64-sysroot
""")  # fmt: skip
    script.chmod(0o755)
    return [str(script), "arm64"]


def test_sysroot_fetch_retries_while_the_mirror_syncs(tmp_path):
    argv = _flaky_script(tmp_path, failures=2)
    assert fetch_sysroot(argv, tries=3, backoff=0.01) == ("/tmp/arm64-sysroot", "")
    assert (tmp_path / "count").read_text().strip() == "3"


def test_sysroot_fetch_that_keeps_failing_says_what_failed(tmp_path):
    sysroot, why = fetch_sysroot(_flaky_script(tmp_path, failures=9), tries=3, backoff=0.01)
    assert sysroot is None
    assert "failed 3 times" in why and "exit 100" in why
    assert "Hash Sum mismatch" in why and "\n" not in why  # one line, apt's E: line
    assert (tmp_path / "count").read_text().strip() == "3"


def test_sysroot_fetch_does_not_retry_what_a_retry_cannot_fix(tmp_path):
    sysroot, why = fetch_sysroot(_flaky_script(tmp_path, failures=9, code=3), backoff=0.01)
    assert sysroot is None and "exit 3" in why
    assert (tmp_path / "count").read_text().strip() == "1"
