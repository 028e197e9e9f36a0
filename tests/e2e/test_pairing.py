"""Pairing finds the agent by the key in the invite, whatever name it runs under
(issue 8 item 13), following the README's own sequence."""

from __future__ import annotations

import json
import socket

from pio_remote import home
from pio_remote.wire import e2e


def test_readme_sequence_invite_without_name_then_start_under_another_name(world):
    lab = world.machine("lab", "alice")
    desk = world.machine("desk", "alice")
    # README: `agent invite` (no -n: the invite names the hostname), then `agent start -n lab-pi`.
    invite = lab.cli("agent", "invite").stdout.strip()
    assert invite.split(":")[1] == socket.gethostname() != "lab-pi"
    key = home.load_identity(lab.home).public

    offline = desk.cli("agent", "pair", invite, check=False)
    assert offline.returncode == 1 and "Traceback" not in offline.stderr
    assert f"the invite's agent (key {e2e.fingerprint(key)}, made as " in offline.stderr
    assert f"'{socket.gethostname()}') is offline or not shared" in offline.stderr

    world.start_agent(lab, "lab-pi")
    paired = desk.cli("agent", "pair", invite)
    assert f"Paired with agent 'alice/lab-pi' (key {e2e.fingerprint(key)})" in paired.stdout
    devices = json.loads(desk.cli("-a", "lab-pi", "device", "list", "--json-output").stdout)
    assert list(devices) == ["lab-pi"]

    # The invite was used: a second client is refused by the agent.
    other = world.machine("other", "alice")
    again = other.cli("agent", "pair", invite, check=False)
    assert again.returncode == 1 and "already used or expired" in again.stderr
