"""Single-file archives for other systems: macOS and Windows archives cross-built from
PyPI's platform wheels carry native code for their platform only (read from the binary
headers and the wheel tags), and an archive run on the wrong OS or machine names the
archive built for it, or says none is. The ARMv6 archive (Pi 1, Pi Zero) runs under
``qemu-arm -cpu arm1176`` on Debian's armel CPython and python3-cryptography.

Building downloads wheels from PyPI (about 40 s an archive): each is built once per
session, for CPython 3.11 only.
"""

from __future__ import annotations

import json
import struct
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, Proc
from test_zipapp import _bare_env, _build, _emulated_python

from pio_remote import onefile

MACHO_64, MACHO_FAT = b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe"
CPU_ARM64, CPU_X86_64 = 0x0100000C, 0x01000007
PE_AMD64 = 0x8664
# target: (what its native files end with, the machine each must be built for)
FOREIGN = {
    "macos-arm64": (".so", CPU_ARM64),
    "macos-x86_64": (".so", CPU_X86_64),
    "windows-amd64": (".pyd", PE_AMD64),
}
WHEEL_PLATFORMS = {
    "macos-arm64": ("macosx_", ("_arm64", "_universal2")),
    "macos-x86_64": ("macosx_", ("_x86_64", "_universal2", "_intel")),
    "windows-amd64": ("win_amd64", ("",)),
}


def macho_cpus(data: bytes) -> set[int]:
    """The CPU types a Mach-O file (thin or universal) is built for."""
    if data[:4] == MACHO_64:
        return {struct.unpack_from("<i", data, 4)[0]}
    assert data[:4] == MACHO_FAT, f"not a Mach-O file: {data[:4]!r}"
    count = struct.unpack_from(">I", data, 4)[0]
    return {struct.unpack_from(">i", data, 8 + 20 * i)[0] for i in range(count)}


def pe_machine(data: bytes) -> int:
    assert data[:2] == b"MZ", f"not a PE file: {data[:4]!r}"
    offset = struct.unpack_from("<I", data, 0x3C)[0]
    assert data[offset : offset + 4] == b"PE\0\0"
    return struct.unpack_from("<H", data, offset + 4)[0]


def spec_targets() -> dict[str, dict]:
    """The target table an archive carries (build-zipapp writes it into _build.json)."""
    spec = tomllib.loads((ROOT / "zipapp.spec").read_text())["targets"]
    return {
        name: {"os": t.get("os", "Linux"), "machines": t["machines"],
               "pythons": t["python_versions"], "from_system": bool(t.get("from_system"))}
        for name, t in spec.items() if name != "native"
    }  # fmt: skip


@pytest.fixture(scope="session", params=list(FOREIGN))
def foreign_pyz(request, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(f"pyz-{request.param}")
    (pyz,) = _build(out, "--target", request.param, "--python", "3.11")
    return request.param, pyz


def test_macos_and_windows_archives_carry_native_code_for_their_platform(foreign_pyz):
    target, pyz = foreign_pyz
    ending, machine = FOREIGN[target]
    with zipfile.ZipFile(pyz) as archive:
        names = archive.namelist()
        native = [n for n in names if n.endswith((".so", ".pyd", ".dylib", ".dll"))]
        assert native and all(n.endswith((ending, ".dylib", ".dll")) for n in native), native
        for name in native:
            head = archive.read(name)[:4096]
            if ending == ".pyd":
                assert pe_machine(head) == machine, name
            else:
                assert machine in macho_cpus(head), name
        bases = {n.rsplit("/", 1)[-1].split(".")[0] for n in native}
        assert {"_cffi_backend", "_rust"} <= bases  # cffi and cryptography
        assert any(b.startswith("_psutil") for b in bases)  # the `extra` of zipapp.spec
        prefix, suffixes = WHEEL_PLATFORMS[target]
        for name in (n for n in names if n.endswith(".dist-info/WHEEL")):
            for tag in archive.read(name).decode().splitlines():
                if tag.startswith("Tag:") and not tag.endswith("-any"):
                    plat = tag.rsplit("-", 1)[1]
                    assert plat.startswith(prefix) and plat.endswith(suffixes), (name, tag)
        info = json.loads(archive.read("site-packages/pio_remote/_build.json"))
    if target.startswith("windows"):
        assert any(n.startswith("site-packages/colorama/") for n in names)  # click's, there
    assert info["platform"] == target and info["targets"] == spec_targets()
    assert info["os"] == {"macos": "Darwin", "windows": "Windows"}[target.split("-")[0]]
    assert "this machine runs Linux on x86_64: use pio-remote-*-linux-x86_64-cp311.pyz" in (
        onefile.problem(info, "x86_64", "3.11", {}.get, "Linux") or ""
    )
    own = info["machines"][0]
    assert onefile.problem(info, own, "3.11", {}.get, info["os"]) is None


@pytest.mark.parametrize(
    ("system", "machine", "expected"),
    [
        ("Darwin", "arm64", "this machine runs macOS on arm64: use pio-remote-*-macos-arm64-"),
        ("Darwin", "x86_64", "runs macOS on x86_64: use pio-remote-*-macos-x86_64-cp311.pyz"),
        ("Windows", "AMD64", "use pio-remote-*-windows-amd64-cp311.pyz"),
        ("Linux", "arm64", "use pio-remote-*-linux-aarch64-cp311.pyz"),  # an arm64 kernel's name
        ("Linux", "armv6l", "use pio-remote-*-linux-armv6-cp311.pyz and install the system's"),
        ("Linux", "armv7l", "use pio-remote-*-linux-armv7-cp311.pyz and install the system's"),
        ("FreeBSD", "amd64", "no single-file archive is built"),
        ("Linux", "x86_64", None),
    ],
)
def test_the_archive_for_this_os_and_machine_is_named_or_none_is(system, machine, expected):
    info = {"platform": "linux-x86_64", "os": "Linux", "python": "3.11",
            "machines": ["x86_64", "amd64"], "targets": spec_targets()}  # fmt: skip
    why = onefile.problem(info, machine, "3.11", {}.get, system)
    if expected is None:
        assert why is None
    else:
        assert why is not None and expected in why, why
        named = [t for t in spec_targets() if f"-{t}-" in why]
        assert len(named) <= 1 and "linux-arm64" not in why, why


@pytest.fixture(scope="session")
def armel_python() -> list[str]:
    """Debian's armel python3.11 and python3-cryptography, on an emulated ARM1176 (Pi 1)."""
    return _emulated_python("armel", "qemu-arm-static", cpu="arm1176")


@pytest.fixture(scope="session")
def armv6_pyz(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pyz-armv6")
    (pyz,) = _build(out, "--target", "linux-armv6", "--python", "3.11")
    return pyz


def test_armv6_agent_uses_the_system_cryptography(world, armv6_pyz, armel_python, tmp_path):
    """A Pi Zero's agent: ARMv6, Noise on the system's python3-cryptography."""
    with zipfile.ZipFile(armv6_pyz) as archive:
        names = archive.namelist()
        info = json.loads(archive.read("site-packages/pio_remote/_build.json"))
    assert not [n for n in names if n.endswith((".so", ".pyd"))]  # nothing native inside
    assert not [n for n in names if "/zeroconf/" in n]  # no armv6 wheel: the system's
    assert (info["platform"], info["machines"]) == ("linux-armv6", ["armv6l"])
    world.board(tmp_path / "vb" / "b0")
    pi = world.machine("pi", "zed")
    desk = world.machine("desk", "zed")
    creds = {k: v for k, v in pi.env.items() if k.startswith("PIO_REMOTE_")}
    agent = Proc(
        [*armel_python, str(armv6_pyz), "agent", "start", "-n", "pizero",
         "--port-glob", str(tmp_path / "vb" / "*")],
        _bare_env(tmp_path, tmp_path / "shiv", **creds),
    )  # fmt: skip
    world.procs.append(agent)
    agent.wait_for(r"agent zed/pizero online", timeout=300)
    world.pair(pi, desk, "pizero")
    devices = json.loads(desk.cli("-a", "pizero", "device", "list", "--json-output").stdout)
    assert str(tmp_path / "vb" / "b0") in [d["port"] for d in devices["pizero"]]
    mdns = desk.cli("-a", "pizero", "device", "list", "--mdns", check=False)
    assert mdns.returncode == 1 and "sudo apt install python3-zeroconf" in mdns.stdout, mdns
    version = subprocess.run(
        [*armel_python, str(armv6_pyz), "--version"],
        env=_bare_env(tmp_path, tmp_path / "shiv"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "single file for linux-armv6, CPython 3.11" in version.stdout, version.stderr
