"""Two agents, one name: the running one keeps it unless the newcomer holds its key.

Real relay, agents and CLI. Issue: a second home starting ``agent start -n lab-pi``
used to replace the running ``lab-pi``, which then exited 2 (a code the systemd
unit does not restart), so the name was gone once the newcomer stopped.
"""

from __future__ import annotations

import json
import re

from conftest import PY, ROOT, World
from proctools import Proc

ERROR = 1  # docs/cli.md: trying again can help (the other agent may stop)
USAGE = 2


def online_key(agent: Proc) -> str:
    """The fingerprint an agent printed when it came online."""
    m = agent.wait_for(r"agent \S+ online \(key ([0-9a-f:]+)\)")
    return m.group(1)


def listed(world: World, machine) -> list[dict]:
    return json.loads(machine.cli("agent", "list", "--json-output").stdout)


def test_another_home_cannot_take_a_running_agents_name(world: World):
    lab = world.machine("lab", "alice")
    desk = world.machine("desk", "alice")
    first = world.start_agent(lab, "lab-pi", "--log-level", "error")
    key = online_key(first)
    world.pair(lab, desk, "lab-pi")

    newcomer = Proc(
        [PY, "-m", "pio_remote", "agent", "start", "-n", "lab-pi", "--log-level", "error"],
        world.machine("other", "alice").env,
    )
    world.procs.append(newcomer)
    result = newcomer.finished()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert result.returncode == ERROR, (result.returncode, result.stderr)
    line = lines[0]
    assert "agent name 'lab-pi' is taken" in line, line
    assert key in line, (key, line)
    assert re.search(r"connected from 127\.0\.0\.1:\d+", line), line
    assert "-n NAME" in line, line
    # ... with a code the shipped systemd unit restarts, so it gets the name later.
    unit = (ROOT / "scripts" / "systemd" / "pio-remote-agent.service").read_text()
    prevented = re.search(r"^RestartPreventExitStatus=(.*)$", unit, re.M)
    assert prevented and str(result.returncode) not in prevented.group(1).split()

    # The running agent was not disturbed: still online, still serving its client.
    assert first.popen.poll() is None
    assert [(a["name"], a["fingerprint"]) for a in listed(world, desk)] == [("lab-pi", key)]
    desk.cli("-a", "lab-pi", "device", "list")


def test_the_same_home_restarting_takes_over(world: World):
    lab = world.machine("lab", "alice")
    first = world.start_agent(lab, "lab-pi", "--log-level", "error")
    key = online_key(first)
    second = world.start_agent(lab, "lab-pi", "--log-level", "error")
    assert online_key(second) == key
    result = first.finished()
    assert result.returncode == USAGE, result.stderr
    assert "with this agent's key" in result.stderr
    assert [a["fingerprint"] for a in listed(world, lab)] == [key]
