"""Device leases through real relay, agent and client processes, on a QEMU board."""

from __future__ import annotations

import json
import re
import shutil
import signal

import pytest
from conftest import PY, Proc

from pio_remote.vboard import FIRMWARE_V1, BoardFarm

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm missing"),
]


class Bench:
    """One agent with one virtual board; two CI runners (different client keys)."""

    def __init__(self, world, tmp):
        self.world = world
        self.tmp = tmp
        self.lab = world.machine("lab", "alice")
        (self.lab.home / "agent.toml").write_text(
            f'[[uploader]]\nports = "{tmp}/vb/board*"\n'
            f'command = "{PY} -m pio_remote.vboard upload $UPLOAD_PORT $SOURCE"\n'
        )
        self.ci1 = world.machine("ci1", "alice")
        self.ci2 = world.machine("ci2", "alice")
        self.agent = None

    def start(self):
        self.agent = self.world.start_agent(self.lab, "lab", "--port-glob", f"{self.tmp}/vb/board*")
        for ci in (self.ci1, self.ci2):
            self.world.pair(self.lab, ci, "lab")

    def restart(self):
        self.agent.stop()
        self.agent = self.world.start_agent(self.lab, "lab", "--port-glob", f"{self.tmp}/vb/board*")

    def holder(self, ci) -> Proc:
        """`device lock` without --ttl, running: it holds the lease until it stops."""
        proc = Proc(
            [PY, "-m", "pio_remote", "-a", "lab", "device", "lock", "-p", self.port],
            ci.env,
        )
        self.world.procs.append(proc)
        proc.wait_for(r"^[0-9a-f]{16}$")
        return proc

    def test(self, ci, *args, **kw):
        return ci.cli(
            "-a", "lab", "test", "--firmware", str(FIRMWARE_V1), "--upload-port", self.port,
            *args, check=False, **kw,
        )  # fmt: skip

    def devices(self, ci) -> dict:
        out = ci.cli("-a", "lab", "device", "list", "--json-output").stdout
        return {d["port"]: d for d in json.loads(out)["lab"]}


@pytest.fixture
def bench(world, tmp_path):
    with BoardFarm(tmp_path / "vb", count=1, firmware=FIRMWARE_V1) as farm:
        b = Bench(world, tmp_path)
        b.port = farm.port(0)
        b.start()
        yield b


def test_wait_waits_for_the_holder_then_fails_naming_it(bench):
    holder = bench.holder(bench.ci1)
    listed = bench.devices(bench.ci2)[bench.port]
    assert listed["lease"]["holder"].startswith("alice (client key ")
    assert set(listed) == {"port", "description", "hwid", "lease"}  # PlatformIO's keys + ours
    table = bench.ci2.cli("-a", "lab", "device", "list").stdout
    assert "Held by" in table and "alice (client key" in table
    upload = bench.ci2.cli(
        "-a", "lab", "run", "-t", "upload", "--firmware", str(FIRMWARE_V1),
        "--upload-port", bench.port, check=False,
    )  # fmt: skip
    assert upload.returncode == 1
    assert "is leased by alice (client key " in upload.stderr and "until " in upload.stderr
    assert "--wait" not in upload.stderr  # `run` has none to offer
    assert "'pio-remote -a alice/lab device unlock -p " in upload.stderr
    refused = bench.test(bench.ci2, "--wait", "2")
    assert refused.returncode == 1
    assert f"port {bench.port} is still leased by alice (client key " in refused.stderr
    assert "Traceback" not in refused.stderr
    # Waiting long enough: the holder lets go (SIGTERM), and the waiting run goes ahead.
    waiting = Proc(
        [PY, "-m", "pio_remote", "-a", "lab", "test", "--firmware", str(FIRMWARE_V1)]
        + ["--upload-port", bench.port, "--wait", "60"],
        bench.ci2.env,
    )
    bench.world.procs.append(waiting)
    assert waiting.err is not None
    said = waiting.err.wait_for(
        rf"^lab:{re.escape(bench.port)}: waiting up to 60 s: leased by alice", 30
    )
    assert said, waiting.stderr_tail()  # the agent holds the call until the port is free
    holder.stop(signal.SIGTERM)
    assert waiting.popen.wait(timeout=90) == 0, waiting.stderr_tail()
    assert "released" in holder.stderr_tail()


def test_a_killed_holder_releases_its_lease(bench):
    holder = bench.holder(bench.ci1)
    holder.popen.send_signal(signal.SIGKILL)  # a CI job killed outright
    # The agent sees the session end and drops the lease; the waiter gets the port.
    got = bench.ci2.cli(
        "-a", "lab", "device", "lock", "-p", bench.port, "--ttl", "1m", "--wait", "30"
    )
    assert len(got.stdout.strip()) == 16


def test_ttl_expiry_own_lease_id_and_restart(bench):
    lease = bench.ci1.cli(
        "-a", "lab", "device", "lock", "-p", bench.port, "--ttl", "1h", "--note", "soak test"
    ).stdout.strip()
    # The holder's own commands need the lease id; the same key without it is refused.
    assert bench.test(bench.ci1).returncode == 1
    bench.ci1.extra["PIO_REMOTE_LEASE"] = lease
    own = bench.test(bench.ci1)
    assert own.returncode == 0, own.stderr
    # A --ttl lease survives an agent restart.
    bench.restart()
    info = bench.devices(bench.ci2)[bench.port]["lease"]
    assert info["note"] == "soak test"
    assert bench.ci2.cli("-a", "lab", "device", "unlock", "-p", bench.port, check=False).returncode
    assert bench.ci1.cli("-a", "lab", "device", "unlock", "-p", bench.port).returncode == 0
    assert "lease" not in bench.devices(bench.ci2)[bench.port]

    short = bench.ci1.cli("-a", "lab", "device", "lock", "-p", bench.port, "--ttl", "2s")
    assert short.returncode == 0
    now = bench.ci2.cli("-a", "lab", "device", "lock", "-p", bench.port, "--ttl", "1m", check=False)
    assert now.returncode == 1 and "leased by alice" in now.stderr
    later = bench.ci2.cli(
        "-a", "lab", "device", "lock", "-p", bench.port, "--ttl", "1m", "--wait", "20"
    )
    assert later.returncode == 0  # the 2 s lease expired while it waited
