"""Client side of the board farm: the uploader and a process wrapper for tests.

Uploading needs no event loop: it only replaces a file and sends one signal to the farm
process, then polls the board's state file until the board has rebooted.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from pio_remote.daemon import pid_alive
from pio_remote.vboard.linewatch import LineWatcher

from .elf import is_arm_elf
from .host import (
    DEFAULT_FIRMWARE,
    RELOAD_SIGNAL,
    RESET_MARKER,
    board_home,
    registry_entry,
)

_PROJECT_ROOT = Path(__file__).resolve().parents[2]


class UploadError(Exception):
    """The firmware could not be flashed; the message says why."""


@dataclass(frozen=True)
class PortInfo:
    """A board as the uploader sees it, read from the farm's state file."""

    name: str
    link: Path
    pts: str
    home: Path
    pid: int
    state: dict[str, Any]


def _read_state(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def resolve_port(port: str | os.PathLike[str]) -> PortInfo:
    """Find the board behind a port given as its symlink (``DIR/boardK``) or ``/dev/pts/N``."""
    port = Path(port)
    candidates = [board_home(port.parent, port.name) / "state.json"]
    real = os.path.realpath(port)
    try:
        pointer = json.loads(registry_entry(real).read_text())
        candidates.append(Path(pointer["state"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for state_path in candidates:
        try:
            state = _read_state(state_path)
        except (OSError, ValueError):
            continue
        if state.get("pts") != real:
            continue
        pid = int(state["pid"])
        if not pid_alive(pid):
            raise UploadError(f"{port}: the board farm (pid {pid}) is not running")
        return PortInfo(
            str(state["name"]), Path(state["link"]), real, state_path.parent, pid, state
        )
    raise UploadError(f"{port}: not a virtual board port (no running board farm serves it)")


def upload_firmware(
    port: str | os.PathLike[str],
    firmware: str | os.PathLike[str],
    *,
    timeout: float = 15.0,
    log: Callable[[str], None] = print,
) -> PortInfo:
    """Flash ``firmware`` onto the board at ``port`` and wait until it has rebooted with it."""
    try:
        data = Path(firmware).read_bytes()
    except OSError as exc:
        raise UploadError(f"cannot read firmware {firmware}: {exc.strerror}") from exc
    problem = is_arm_elf(data)
    if problem:
        raise UploadError(f"{firmware}: {problem}")
    info = resolve_port(port)
    digest = hashlib.sha256(data).hexdigest()
    log(f"Uploading {Path(firmware).name} to {info.name} ({info.link} -> {info.pts})")
    boots_before = int(info.state.get("boots", 0))

    target = info.home / "firmware.elf"
    tmp = info.home / f".firmware.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    log(f"Writing {len(data)} bytes to {info.name} ... done")

    if hashlib.sha256(target.read_bytes()).hexdigest() != digest:
        raise UploadError(f"verification failed: {target} does not match {firmware}")
    log("Verifying ... OK")

    # A flash always ends in a reset, as on real hardware, even when the image is
    # unchanged; the marker tells the farm which board was flashed.
    (info.home / RESET_MARKER).touch()
    os.kill(info.pid, RELOAD_SIGNAL)
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = _read_state(info.home / "state.json")
        except (OSError, ValueError):
            state = {}
        if state.get("firmware_sha256") == digest and int(state.get("boots", 0)) > boots_before:
            break
        if not pid_alive(info.pid):
            raise UploadError(f"the board farm (pid {info.pid}) exited during the upload")
        if time.monotonic() > deadline:
            raise UploadError(f"{info.name} did not restart within {timeout:g} s")
        time.sleep(0.01)
    log(f"Resetting {info.name} ... done")
    return info


@dataclass(frozen=True)
class BoardInfo:
    """One board of a started farm."""

    name: str
    link: Path
    pts: str


class BoardFarm:
    """Runs ``python -m pio_remote.vboard start`` as a child process, for tests and demos.

    Usable as ``with BoardFarm(dir, 2) as farm:`` or ``async with`` under trio. The child
    exits (and cleans up) on ``stop()``, and also if this process dies, because it
    watches its stdin for EOF.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        count: int = 1,
        firmware: str | os.PathLike[str] | None = None,
        *,
        verbose: bool = False,
        start_timeout: float = 20.0,
        python: str = sys.executable,
        gdb_port: int | None = None,
        gdb_wait: bool = False,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.count = count
        self.firmware = Path(firmware) if firmware else DEFAULT_FIRMWARE
        self.verbose = verbose
        self.start_timeout = start_timeout
        self.python = python
        self.gdb_port = gdb_port
        self.gdb_wait = gdb_wait
        self.boards: list[BoardInfo] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.directory / ".farm.log"
        self._watcher: LineWatcher | None = None

    def env(self) -> dict[str, str]:
        """Environment for our child processes: this checkout importable even if not installed."""
        env = dict(os.environ)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{_PROJECT_ROOT}{os.pathsep}{path}" if path else str(_PROJECT_ROOT)
        return env

    def cli(self, *args: str) -> list[str]:
        """Command line for ``python -m pio_remote.vboard ARGS``."""
        return [self.python, "-m", "pio_remote.vboard", *args]

    def start(self) -> None:
        """Spawn the farm and wait for its ``ready`` line."""
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            "start",
            "--dir",
            str(self.directory),
            "--count",
            str(self.count),
            "--firmware",
            str(self.firmware),
            "--exit-on-stdin-eof",
        ]
        if self.verbose:
            args.append("--verbose")
        if self.gdb_port is not None:
            args += ["--gdb-port", str(self.gdb_port)] + (["--gdb-wait"] if self.gdb_wait else [])
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.cli(*args),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=self.env(),
            )
        try:
            self.boards = self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> list[BoardInfo]:
        assert self.proc is not None and self.proc.stdout is not None
        watcher = self._watcher = LineWatcher(self.proc.stdout)
        if watcher.wait_for(r"^ready$", self.start_timeout) is None:
            if watcher.closed:
                self.proc.wait()
                raise RuntimeError(
                    f"board farm exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            raise TimeoutError(f"board farm not ready after {self.start_timeout:g} s")
        boards = []
        for line in watcher.lines:
            parts = line.split()
            if len(parts) == 4 and parts[2] == "->":
                boards.append(BoardInfo(parts[0], Path(parts[1]), parts[3]))
        return boards

    def log_tail(self, limit: int = 4000) -> str:
        """End of the farm's stderr, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the farm and wait; SIGKILL it if it does not exit in time."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
        if self._watcher is not None:  # it owns stdout and closes it at end of file
            self._watcher.wait_closed(timeout)
        return proc.returncode

    def port(self, index: int = 0) -> str:
        """The stable symlink path of board ``index``, what serial clients should open."""
        return str(self.directory / f"board{index}")

    def state(self, index: int = 0) -> dict[str, Any]:
        """The board's current state file contents (boots, qemu_pid, firmware_sha256...)."""
        return _read_state(board_home(self.directory, f"board{index}") / "state.json")

    def run_cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``python -m pio_remote.vboard ARGS`` and capture its exit code and output."""
        return subprocess.run(
            self.cli(*args), capture_output=True, text=True, timeout=timeout, env=self.env()
        )

    def upload(
        self, index: int, firmware: str | os.PathLike[str], timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the real uploader CLI against board ``index``; returns its exit and output."""
        return self.run_cli("upload", self.port(index), str(firmware), timeout=timeout)

    def __enter__(self) -> BoardFarm:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> BoardFarm:
        await _to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await _to_thread(self.stop)

    async def aupload(
        self, index: int, firmware: str | os.PathLike[str], timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Async form of :meth:`upload`."""
        return await _to_thread(self.upload, index, firmware, timeout)


async def _to_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """trio's worker thread, imported only by async users: the uploader CLI stays light."""
    import trio

    return await trio.to_thread.run_sync(fn, *args)
