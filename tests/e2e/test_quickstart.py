"""README command 1: quickstart brings up relay, agent and a board, watches them, and
cleans up whatever way it ends."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
import trio
from conftest import PY, Proc

from pio_remote.cli import quickstart_procs as procs
from pio_remote.cli.quickstart import invocation

HAS_QEMU = shutil.which("qemu-system-arm") is not None


class Quickstart:
    """One `pio-remote quickstart --dir` run, with its own TMPDIR to prove it leaves none."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.dir = tmp / "qs"
        self.tmpdir = tmp / "tmpdir"
        self.tmpdir.mkdir(exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PIO_REMOTE_")}
        self.env.update(PIO_REMOTE_HOME=str(tmp / "home"), TMPDIR=str(self.tmpdir))
        self.env["PYTHONUNBUFFERED"] = "1"
        self.argv = [PY, "-m", "pio_remote", "quickstart", "--dir", str(self.dir)]

    def start(self) -> Proc:
        proc = Proc(self.argv, self.env, cwd=self.tmp)
        proc.wait_for("^Running; Ctrl-C", timeout=90)
        return proc

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "PIO_REMOTE_HOME": str(self.dir / "home")}
        return subprocess.run([PY, "-m", "pio_remote", *args], env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    def children(self) -> list[psutil.Process]:
        """Processes whose command line names this quickstart's directory."""
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if str(self.dir) in " ".join(proc.info["cmdline"] or []) and "quickstart" not in (
                proc.info["cmdline"] or []
            ):
                found.append(proc)
        return found

    def assert_clean(self) -> None:
        assert not [p.info["cmdline"] for p in self.children()]
        assert not list(self.tmpdir.iterdir()), "temporary files left behind"
        assert not (self.dir / "quickstart.pid").exists()
        assert not [p for p in (self.dir / "boards").iterdir()], "board links left behind"


@pytest.fixture
def qs(tmp_path):
    run = Quickstart(tmp_path)
    yield run
    for proc in run.children():
        proc.kill()


def test_quickstart_serves_device_list_and_ctrl_c_stops_everything(qs):
    proc = qs.start()
    listing = qs.cli("device", "list", "--json-output")
    assert listing.returncode == 0, listing.stderr
    board = "board0" if HAS_QEMU else "demo0"
    assert str(qs.dir / "boards" / board) in listing.stdout
    assert len(qs.children()) >= 3  # relay, board, agent (+ QEMU)
    proc.popen.send_signal(signal.SIGINT)
    proc.wait_for(r"^Stopped the agent 'demo-agent' \(pid \d+\), the .*board \(pid \d+\), "
                  r"the relay \(pid \d+\)\.$", timeout=30)  # fmt: skip
    assert proc.popen.wait(timeout=30) == 0
    qs.assert_clean()


def test_a_second_quickstart_in_the_same_directory_is_refused(qs):
    first = qs.start()
    second = subprocess.run(qs.argv, env=qs.env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 1
    assert f"a quickstart is already running (pid {first.popen.pid})" in second.stderr
    assert "Traceback" not in second.stderr
    # The first one still works: its token was not rotated.
    assert qs.cli("agent", "list").returncode == 0
    first.popen.send_signal(signal.SIGINT)
    assert first.popen.wait(timeout=30) == 0
    qs.assert_clean()


@pytest.mark.parametrize("victim", ["agent", "relay"])
def test_a_child_that_dies_is_reported_and_quickstart_fails(qs, victim):
    proc = qs.start()
    pattern = "agent start" if victim == "agent" else "relay serve"
    (target,) = [p for p in qs.children() if pattern in " ".join(p.cmdline())]
    target.kill()
    assert proc.popen.wait(timeout=30) == 1
    err = proc.stderr_text()
    assert f"Error: the {victim}" in err and "was killed by SIGKILL" in err, err
    assert "Traceback" not in err
    qs.assert_clean()


def test_next_commands_use_the_path_that_was_typed(tmp_path, monkeypatch):
    venv_script = tmp_path / ".venv" / "bin" / "pio-remote"
    venv_script.parent.mkdir(parents=True)
    venv_script.write_text("")
    venv_script.chmod(0o755)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert invocation(str(venv_script), tmp_path) == [".venv/bin/pio-remote"]
    assert invocation(str(tmp_path / "pio-remote-0.1.0-linux-x86_64-cp311.pyz"), tmp_path) == [
        "python3",
        "./pio-remote-0.1.0-linux-x86_64-cp311.pyz",
    ]
    monkeypatch.setenv("PATH", f"{venv_script.parent}:/usr/bin:/bin")
    assert invocation(str(venv_script), Path("/")) == ["pio-remote"]


@pytest.mark.qemu
@pytest.mark.skipif(not HAS_QEMU, reason="qemu-system-arm missing")
def test_the_printed_upload_and_test_commands_work_as_pasted(qs):
    from test_upload import read_banner

    proc = qs.start()
    port = str(qs.dir / "boards" / "board0")
    assert b"firmware v1" in read_banner(port)
    (upload,) = [line.strip() for line in proc.lines if " run -t upload " in line]
    command = upload.split("    #", 1)[0]
    # Exactly as a user pastes it, from the directory quickstart ran in.
    argv = shlex.split(command)
    assert argv[0].startswith("PIO_REMOTE_HOME=")
    env = {**qs.env, **dict([argv[0].split("=", 1)])}
    result = subprocess.run(
        argv[1:], env=env, cwd=qs.tmp, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert b"firmware v2" in read_banner(port)
    # `pio-remote test` runs that firmware's Unity report as a test suite.
    (test,) = [shlex.split(line.split("    #", 1)[0]) for line in proc.lines if " test " in line]
    result = subprocess.run(test[1:], env=env, cwd=qs.tmp, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "2 passed, 0 failed" in result.stdout
    proc.popen.send_signal(signal.SIGINT)
    assert proc.popen.wait(timeout=30) == 0


# A child for the supervisor alone: says it is up (with its grandchild's pid), then waits.
SLEEPER = """
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("up", grandchild.pid, flush=True)
time.sleep(60)
"""


async def test_the_trio_supervisor_notices_a_killed_child_and_stops_the_rest(tmp_path):
    async with trio.open_nursery() as nursery:
        group = procs.Group(nursery, tmp_path / "logs")
        first = await group.start("first child", [PY, "-c", SLEEPER], dict(os.environ), r"^up")
        second = await group.start("second child", [PY, "-c", SLEEPER], dict(os.environ), r"^up")
        first.process.kill()
        with trio.fail_after(10):
            await group.ended.wait()
        assert group.failure is not None
        assert group.failure.startswith(f"the first child (pid {first.process.pid}) was killed by")
        assert "last lines of" in group.failure and "up " in group.failure  # its log's tail
        grandchild = psutil.Process(int(second.ready.string.split()[1]))
        assert await group.stop() == [f"the second child (pid {second.process.pid})"]
        assert second.process.returncode == -signal.SIGTERM
        grandchild.wait(timeout=10)  # its process group was stopped, not only the child
        nursery.cancel_scope.cancel()


async def test_a_child_that_exits_while_starting_ends_the_start_with_its_log(tmp_path):
    script = "import sys; print('cannot bind', file=sys.stderr); sys.exit(3)"
    async with trio.open_nursery() as nursery:
        group = procs.Group(nursery, tmp_path / "logs")
        with trio.fail_after(10), group.scope:
            await group.start("relay", [PY, "-c", script], dict(os.environ), r"listening")
            raise AssertionError("start returned for a child that never came up")
        assert group.failure is not None and "exited with code 3" in group.failure
        assert "cannot bind" in group.failure
        assert await group.stop() == []
        nursery.cancel_scope.cancel()
