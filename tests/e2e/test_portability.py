"""The client on a standard library without POSIX terminals and locks, as on Windows.

CI runs Linux, so the client process is given Windows' view of what it may import: a
``sitecustomize`` on its PYTHONPATH makes ``fcntl``, ``termios``, ``tty`` and ``pty``
raise ImportError and removes ``signal.SIGHUP``. The relay and the agent run as usual.
Every client command then has to work: pairing, ``agent list``, ``device list``,
``device monitor`` in pipe mode, ``device forward --tcp``, ``run -t upload``, ``test``.
(docs/platforms.md says what this does and does not prove.)
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import PY, Env
from forwardkit import TcpServer, connect, recv_exactly

from pio_remote.vboard import FIRMWARE_V1, FIRMWARE_V2, BoardFarm

BLOCKED = ("fcntl", "termios", "tty", "pty")
SITECUSTOMIZE = f'''\
"""Windows' standard library, as far as the client's imports can tell (test_portability)."""
import signal
import sys
import warnings
from importlib.abc import MetaPathFinder

BLOCKED = {BLOCKED!r}


class Blocked(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"No module named {{name!r}} (blocked, as on Windows)", name=name)
        return None


sys.meta_path.insert(0, Blocked())
for name in BLOCKED:
    sys.modules.pop(name, None)
del signal.SIGHUP
# Without fcntl, filelock falls back to its soft lock and says so; on Windows it takes
# msvcrt's lock instead, so the warning belongs to this imitation, not to the client.
warnings.filterwarnings("ignore", "only soft file lock is available")
'''


def portable(machine: Env, tmp: Path) -> Env:
    """``machine``'s home with Windows' standard library, checked to be in force."""
    site = tmp / "windows-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = Env(machine.home, {**machine.extra, "PYTHONPATH": str(site)})
    probe = "import signal, sys; print(hasattr(signal, 'SIGHUP')); import " + ", ".join(BLOCKED)
    result = subprocess.run([PY, "-c", probe], env=env.env, capture_output=True, text=True)
    assert result.stdout.strip() == "False" and "blocked, as on Windows" in result.stderr
    return env


def checked(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "ImportError" not in result.stderr
    return result


IMPORT_ALL = """
import importlib, pkgutil
import pio_remote.cli, pio_remote.client, pio_remote.net, pio_remote.wire
failed = ["pio_remote.home"]
for package in (pio_remote.cli, pio_remote.client, pio_remote.net, pio_remote.wire):
    failed += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
for name in list(failed):
    try:
        importlib.import_module(name)
        failed.remove(name)
    except ImportError as exc:
        print(name, exc)
"""


def test_every_client_module_imports_without_posix_modules(tmp_path):
    """Not only the commands below: every module of the client's path, the library's too."""
    env = portable(Env(tmp_path / "home"), tmp_path)
    result = subprocess.run([PY, "-c", IMPORT_ALL], env=env.env, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_list_monitor_and_forward_work_without_posix_modules(world, tmp_path):
    server = TcpServer("echo")
    try:
        lab = world.machine("lab", "alice")
        (lab.home / "agent.toml").write_text(f'[[forward]]\nallow = ["{server.address}"]\n')
        board = tmp_path / "boards" / "demo0"
        world.board(board)
        world.start_agent(lab, "lab-pi", "--port-glob", str(tmp_path / "boards" / "*"))
        desk = portable(world.machine("desk", "alice"), tmp_path)
        invite = lab.cli("agent", "invite", "-n", "lab-pi").stdout.strip()
        checked(desk.cli("agent", "pair", invite))

        assert "lab-pi" in checked(desk.cli("agent", "list")).stdout
        assert str(board) in checked(desk.cli("device", "list", "--json-output")).stdout
        monitor = checked(
            desk.cli("-a", "lab-pi", "device", "monitor", "-p", str(board), "--raw",
                     "--eof-linger", "1", input="portable\n")
        )  # fmt: skip
        assert "portable" in monitor.stdout  # the demo board echoes what it gets

        argv = [PY, "-m", "pio_remote", "-a", "lab-pi", "device", "forward", "--tcp"]
        forward = world.spawn([*argv, server.address, "--listen", "127.0.0.1:0"], desk.env)
        port = int(forward.wait_for(r"Forwarding 127\.0\.0\.1:(\d+) to ").group(1))
        with connect(port) as sock:
            sock.sendall(b"through the tunnel")
            assert recv_exactly(sock, 18) == b"through the tunnel"
        forward.popen.send_signal(signal.SIGTERM)
        done = forward.finished()
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    finally:
        server.close()


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm missing")
def test_upload_and_test_work_without_posix_modules(world, tmp_path):
    with BoardFarm(tmp_path / "vb", count=1, firmware=FIRMWARE_V1) as farm:
        lab = world.machine("lab", "alice")
        (lab.home / "agent.toml").write_text(
            f'[[uploader]]\nports = "{tmp_path}/vb/board*"\n'
            f'command = "{PY} -m pio_remote.vboard upload $UPLOAD_PORT $SOURCE"\n'
        )
        world.start_agent(lab, "lab", "--port-glob", f"{tmp_path}/vb/board*")
        desk = portable(world.machine("desk", "alice"), tmp_path)
        invite = lab.cli("agent", "invite", "-n", "lab").stdout.strip()
        checked(desk.cli("agent", "pair", invite))
        port = farm.port(0)

        upload = ["-a", "lab", "run", "-t", "upload", "--upload-port", port, "--firmware"]
        result = checked(desk.cli(*upload, str(FIRMWARE_V2), timeout=120))
        assert "Uploading blink-v2.elf to board0" in result.stdout

        test = ["-a", "lab", "test", "--upload-port", port, "--firmware", str(FIRMWARE_V1)]
        result = checked(desk.cli(*test, timeout=120))
        assert "3 case(s): 2 passed, 0 failed, 1 skipped, 0 errored" in result.stdout
