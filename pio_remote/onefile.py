"""Entry point of the single-file build (scripts/build-zipapp): check the archive fits
this machine before anything native loads, then run the CLI.

A .pyz carries native wheels (cryptography, cffi) for one OS, one machine and one
CPython minor version. Run elsewhere, they fail deep inside an import with a message
about ELF or Mach-O headers or undefined symbols; this says which archive to use
instead, naming only targets that are built (the archive lists them all). On 32-bit
ARM, PyPI has no cffi wheels, so those archives leave cryptography out and use the
system's (Debian's python3-cryptography), which Debian's python3 keeps on sys.path.
"""

from __future__ import annotations

import importlib.util
import platform
import sys
from typing import Any

from pio_remote.version import build_info, version_text

SYSTEM_CRYPTO = (
    "install the system's cryptography (Debian, Raspberry Pi OS: "
    "sudo apt install python3-cryptography) and run the .pyz with /usr/bin/python3; "
    "the archive then uses it"
)
SYSTEMS = {"Darwin": "macOS"}  # platform.system() as people say it


def _archive(platform: str, python: str, pythons: list[str]) -> str:
    """The archive to use instead, named only if it is built (zipapp.spec)."""
    if python in pythons:
        return f"pio-remote-*-{platform}-cp{python.replace('.', '')}.pyz"
    return (
        " or ".join(
            f"pio-remote-*-{platform}-cp{v.replace('.', '')}.pyz with python{v}" for v in pythons
        )
        + f" (none is built for Python {python})"
    )


def problem(
    info: dict[str, Any], machine: str, python: str, found: Any, system: str = "Linux"
) -> str | None:
    """Why this archive cannot run here, with what to do instead; None when it can."""
    # Archives built before _build.json listed "pythons" named this Python's: still do.
    pythons = list(info.get("pythons") or [info["python"], python])
    if system != info.get("os", "Linux") or machine not in info["machines"]:
        return _elsewhere(info, system, machine, python)

    if python != info["python"] and python not in pythons:
        others = [v for v in pythons if v != info["python"]]
        return (
            f"this archive is for CPython {info['python']}, this is Python {python}, for "
            f"which no archive is built: run it with python{info['python']}"
            + (f", or use {_archive(info['platform'], python, others)}" if others else "")
        )
    if python != info["python"]:
        return (
            f"this archive is for CPython {info['python']}, this is Python {python}: its "
            f"native parts (cffi, cryptography) load only there. Use "
            f"{_archive(info['platform'], python, pythons)}, or run it with python{info['python']}"
        )
    missing = [mod for mod in info.get("from_system", []) if found(mod) is None]
    if missing:
        return f"{', '.join(missing)} cannot be loaded (PyPI has none for {machine}): " + (
            SYSTEM_CRYPTO
        )
    return None


def _elsewhere(info: dict[str, Any], system: str, machine: str, python: str) -> str:
    """This archive is for another OS or machine: name the one built for this, if any."""
    here = f"{SYSTEMS.get(system, system)} on {machine}"
    start = f"this archive is for {info['platform']}, this machine runs {here}"
    for name, target in info.get("targets", {}).items():
        if target["os"] == system and machine in target["machines"]:
            use = f"{start}: use {_archive(name, python, target['pythons'])}"
            if target.get("from_system"):
                return f"{use} and " + SYSTEM_CRYPTO
            return f"{use} (scripts/build-zipapp --target {name})"
    built = ", ".join(info.get("targets", {})) or "none listed"
    return (
        f"{start}, for which no single-file archive is built (targets: {built}): "
        "install pio-remote with pip there instead"
    )


def main() -> None:
    info = build_info()
    if info is not None:
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        why = problem(info, platform.machine(), python, importlib.util.find_spec, platform.system())
        if sys.argv[1:] == ["--version"]:  # what it was built for, even on the wrong machine
            print(f"pio-remote, version {version_text()}")
            if why:
                print(f"pio-remote: {why}", file=sys.stderr)
            return
        if why:
            print(f"pio-remote: {why}", file=sys.stderr)
            sys.exit(2)
    from pio_remote.cli import main as cli_main

    try:
        cli_main()
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in ("_cffi_backend", "cryptography", "cffi"):
            raise
        print(f"pio-remote: {exc}: {SYSTEM_CRYPTO}", file=sys.stderr)
        sys.exit(2)
