"""SIGHUP (an ssh drop) stops the agent like SIGTERM, killing an uploader's process
group; a restarted agent removes what a killed one left behind (issue 8 item 7)."""

from __future__ import annotations

import os
import signal

import psutil
import pytest
from conftest import PY, Proc

SLOW_UPLOADER = """\
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
with open(sys.argv[2], "w") as fh:
    fh.write(f"{os.getpid()} {child.pid}")
print("flashing", sys.argv[1], flush=True)
time.sleep(120)
"""


@pytest.fixture
def slow(world, tmp_path):
    lab = world.machine("lab", "alice")
    desk = world.machine("desk", "alice")
    script = tmp_path / "slow.py"
    script.write_text(SLOW_UPLOADER)
    (lab.home / "agent.toml").write_text(
        f'[[uploader]]\nports = "*.local"\ncommand = "{PY} {script} $SOURCE {tmp_path}/pids"\n'
    )
    fw = tmp_path / "fw.bin"
    fw.write_bytes(os.urandom(4096))

    def upload() -> tuple[Proc, list[psutil.Process]]:
        argv = [PY, "-m", "pio_remote", "-a", "lab-pi", "run", "-t", "upload"]
        client = Proc([*argv, "--firmware", str(fw), "--upload-port", "b.local"], desk.env)
        world.procs.append(client)
        client.wait_for("flashing .*/fw.bin")
        pids = map(int, (tmp_path / "pids").read_text().split())
        return client, [psutil.Process(pid) for pid in pids]

    agent = world.start_agent(lab, "lab-pi")
    world.pair(lab, desk, "lab-pi")
    return world, lab, agent, upload


def jobs(lab) -> list[str]:
    path = lab.home / "work" / "jobs"
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def test_sighup_during_an_upload_kills_the_uploader_group_and_leaves_no_job(slow):
    world, lab, agent, upload = slow
    client, group = upload()
    assert len(jobs(lab)) == 1
    os.kill(agent.popen.pid, signal.SIGHUP)
    assert agent.popen.wait(timeout=15) == 0  # a clean stop, not death by signal
    gone, alive = psutil.wait_procs(group, timeout=10)
    assert alive == [], "the uploader's process group survived SIGHUP"
    assert jobs(lab) == []
    client.stop()


def test_a_restarted_agent_cleans_up_after_one_that_was_killed(slow):
    world, lab, agent, upload = slow
    client, group = upload()
    stale = jobs(lab)
    os.kill(agent.popen.pid, signal.SIGKILL)  # no chance to clean up
    agent.popen.wait(timeout=10)
    assert all(p.is_running() for p in group) and jobs(lab) == stale
    client.stop()

    world.start_agent(lab, "lab-pi")
    gone, alive = psutil.wait_procs(group, timeout=10)
    assert alive == [], "the orphaned uploader group survived the restart"
    assert jobs(lab) == []
