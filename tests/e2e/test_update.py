"""`pio-remote update` through a real relay and agent, with and without PlatformIO there."""

from __future__ import annotations

import json
import os

from conftest import PY

FAKE_PIO = """\
#!{py}
import json, sys
args = sys.argv[1:]
with open({log!r}, "a") as fh:
    fh.write(json.dumps(args) + "\\n")
if args == ["--version"]:
    print("PlatformIO Core, version 6.1.16")
else:
    print("Platform ststm32 @ 17.0.0 [Up-to-date]")
"""


def test_update_reports_versions_runs_platformio_and_is_for_the_owner_only(world, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "pio.log"
    (bindir / "pio").write_text(FAKE_PIO.format(py=PY, log=str(log)))
    (bindir / "pio").chmod(0o755)
    lab = world.machine("lab", "alice")
    lab.extra["PATH"] = f"{bindir}{os.pathsep}{os.environ['PATH']}"
    desk = world.machine("desk", "alice")
    guest = world.machine("guest", "bob")
    world.start_agent(lab, "lab", "-s", "bob")
    # The owner is a key paired with an owner invite (the relay's account name is no proof).
    desk.cli("agent", "pair", lab.cli("agent", "invite", "-n", "lab", "--owner").stdout.strip())
    world.pair(lab, guest, "lab")

    checked = desk.cli("-a", "lab", "update", "--dry-run")
    assert "agent lab: pio-remote 0.1.0, Python " in checked.stdout
    assert "PlatformIO Core PlatformIO Core, version 6.1.16" in checked.stdout
    assert "can build and test with it: yes" in checked.stdout
    assert "Platform ststm32 @ 17.0.0 [Up-to-date]" in checked.stdout
    desk.cli("-a", "lab", "update")
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c for c in calls if c != ["--version"]] == [
        ["update", "--dry-run"],
        ["pkg", "update", "-g"],
    ]

    refused = guest.cli("-a", "alice/lab", "update", check=False)
    assert refused.returncode == 1
    assert "only the owner of agent 'alice/lab' may update it" in refused.stderr
    assert len(log.read_text().splitlines()) == len(calls)  # nothing ran for bob


def test_update_without_platformio_says_what_to_install(world):
    lab = world.machine("lab", "alice")
    lab.extra["PATH"] = "/usr/bin:/bin"
    world.start_agent(lab, "lab")
    result = lab.cli("-a", "lab", "update")  # the agent's own key: no pairing needed
    assert "PlatformIO Core not installed, can build and test with it: no" in result.stdout
    assert "install it on the agent with 'pip install platformio'" in result.stdout
