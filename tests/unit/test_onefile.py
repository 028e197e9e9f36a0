"""The single-file agent's start checks name only archives that are built, and
`--version` says what an archive was built for on any machine."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pio_remote import onefile

ROOT = Path(__file__).resolve().parents[2]
PYTHONS = ["3.11", "3.13"]
AARCH64 = {
    "platform": "linux-aarch64",
    "python": "3.11",
    "machines": ["aarch64"],
    "pythons": PYTHONS,
    # Every archive lists the targets built (scripts/build-zipapp, from zipapp.spec).
    "targets": {
        "linux-aarch64": {"os": "Linux", "machines": ["aarch64"], "pythons": PYTHONS},
        "linux-x86_64": {"os": "Linux", "machines": ["x86_64"], "pythons": PYTHONS},
        "linux-armv7": {
            "os": "Linux",
            "machines": ["armv7l"],
            "pythons": PYTHONS,
            "from_system": True,
        },
    },
}


@pytest.mark.parametrize("machine", ["aarch64", "x86_64", "armv7l"])
def test_an_unbuilt_python_is_never_named_as_an_archive(machine):
    why = onefile.problem(AARCH64, machine, "3.10", {}.get)
    assert why is not None
    assert "cp310" not in why
    assert "cp313.pyz with python3.13" in why and "none is built for Python 3.10" in why


def test_a_built_python_names_its_archive():
    why = onefile.problem(AARCH64, "aarch64", "3.13", {}.get)
    assert "pio-remote-*-linux-aarch64-cp313.pyz" in why


def test_version_of_an_archive_for_another_machine_says_what_it_was_built_for(tmp_path):
    """The package as an archive unpacks it, with a _build.json for another machine."""
    shutil.copytree(ROOT / "pio_remote", tmp_path / "pio_remote")
    foreign = {**AARCH64, "machines": ["no-such-machine"]}
    (tmp_path / "pio_remote" / "_build.json").write_text(json.dumps(foreign))
    run = [sys.executable, "-c", "from pio_remote.onefile import main; main()"]
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    shown = subprocess.run(
        [*run, "--version"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert shown.returncode == 0, shown.stderr
    assert "single file for linux-aarch64, CPython 3.11" in shown.stdout
    assert "this archive is for linux-aarch64" in shown.stderr
    refused = subprocess.run(
        [*run, "agent", "list"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert refused.returncode == 2 and "this archive is for linux-aarch64" in refused.stderr
