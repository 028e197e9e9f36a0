"""What a client is told about a port it cannot have: a lease (whose, how to wait or
unlock) or a debug session (what holds it), through real relay, agent and clients."""

from __future__ import annotations

import re
import subprocess

from conftest import PY, Env, Proc, World
from forwardkit import TcpServer, connect

from pio_remote.vboard import FIRMWARE_V1


class Lab:
    """alice's agent 'lab-pi' with one demo board, and a second client key ('ci')."""

    def __init__(self, world: World, agent_toml: str = "") -> None:
        self.world = world
        self.board = world.tmp / "dev" / "board0"
        self.board.parent.mkdir(exist_ok=True)
        world.board(self.board)
        self.agent_home = world.machine("lab", "alice")
        (self.agent_home.home / "agent.toml").write_text(agent_toml)
        world.start_agent(self.agent_home, "lab-pi", "--port-glob", str(self.board))
        self.ci = world.machine("ci", "alice")
        world.pair(self.agent_home, self.ci, "lab-pi")

    def cli(self, env: Env, *args: str) -> subprocess.CompletedProcess[str]:
        return env.cli("-a", "lab-pi", *args, check=False)

    def spawn(self, env: Env, *args: str) -> Proc:
        return self.world.spawn([PY, "-m", "pio_remote", "-a", "lab-pi", *args], env.env)


def test_a_leased_port_says_whose_lease_and_how_to_wait_or_unlock(world: World):
    lab = Lab(world)
    port = str(lab.board)
    lease = lab.cli(lab.agent_home, "device", "lock", "-p", port, "--ttl", "1h", "--note", "soak")
    assert lease.returncode == 0, lease.stderr
    unlock = f"'pio-remote -a alice/lab-pi device unlock -p {port}'"

    monitor = lab.cli(lab.ci, "device", "monitor", "-p", port)
    assert monitor.returncode == 1
    assert "one monitor at a time" not in monitor.stderr, monitor.stderr
    assert f"port {port} is leased by alice (client key " in monitor.stderr
    assert "(soak)" in monitor.stderr and unlock in monitor.stderr
    assert "--wait" not in monitor.stderr  # the monitor has no --wait to offer

    at_once = lab.cli(lab.ci, "device", "lock", "-p", port, "--ttl", "1m")
    assert at_once.returncode == 1
    assert "wait for it with --wait SECONDS" in at_once.stderr and unlock in at_once.stderr

    # --wait 3: said while it waits (as `test --wait` does), then that the wait ran out.
    waiting = lab.spawn(lab.ci, "device", "lock", "-p", port, "--ttl", "1m", "--wait", "3")
    assert waiting.err is not None
    said = waiting.err.wait_for(
        rf"^lab-pi:{re.escape(port)}: waiting up to 3 s: leased by alice", 20
    )
    assert said, waiting.stderr_tail()
    assert waiting.popen.poll() is None, "the waiting line came before the wait ended"
    done = waiting.finished(30)
    assert done.returncode == 1
    error = done.stderr.splitlines()[-1]
    assert f"port {port} is still leased by alice (client key " in error
    assert "after waiting 3 s" in error and "wait longer with --wait SECONDS" in error
    assert "wait for it with --wait SECONDS" not in error and unlock in error

    # The holder's own key without the lease id: told that the lease is its own.
    own = lab.cli(lab.agent_home, "device", "monitor", "-p", port)
    assert own.returncode == 1
    assert "the lease is this client's" in own.stderr and "PIO_REMOTE_LEASE" in own.stderr


def test_a_board_that_waited_for_a_lease_reports_the_time_it_waited(world: World):
    lab = Lab(world)
    port = str(lab.board)
    assert lab.cli(lab.agent_home, "device", "lock", "-p", port, "--ttl", "1h").returncode == 0
    run = lab.cli(
        lab.ci, "test", "--firmware", str(FIRMWARE_V1), "--upload-port", port,
        "--without-uploading", "--wait", "2",
    )  # fmt: skip
    assert run.returncode == 1
    line = next(x for x in run.stderr.splitlines() if "ERRORED" in x)
    seconds = float(re.search(r" in (\d+\.\d+)s", line).group(1))
    assert seconds >= 2.0, line
    assert line.count(f"lab-pi:{port}") == 1, line  # the board named once


def test_a_port_held_by_a_debug_session_says_so(world: World):
    server = TcpServer("hold")
    world.procs.append(_Closer(server))  # closed with the processes, even on failure
    board = world.tmp / "dev" / "board0"
    lab = Lab(world, f'[[forward]]\nallow = ["{server.address}"]\nport = "{board}"\n')
    forward = lab.spawn(
        lab.ci, "device", "forward", "--tcp", server.address, "--listen", "127.0.0.1:0"
    )
    listen = int(forward.wait_for(r"Forwarding 127\.0\.0\.1:(\d+) to ").group(1))
    with connect(listen):  # gdb attached: the agent holds the board's port meanwhile
        server.wait(accepted=1)
        monitor = lab.cli(lab.ci, "device", "monitor", "-p", str(board))
    assert monitor.returncode == 1
    assert "being flashed" not in monitor.stderr and "one monitor" not in monitor.stderr
    assert f"port {board} is in use: a debug session through {server.address}" in monitor.stderr
    assert "by alice (client key " in monitor.stderr


class _Closer:
    """A TcpServer in the world's process list: stop() closes it."""

    def __init__(self, server: TcpServer) -> None:
        self.server = server

    def stop(self) -> None:
        self.server.close()
