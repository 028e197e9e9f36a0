"""The board farm: QEMU-emulated LM3S6965 boards, each bridged to its own pty.

Every board is a ``qemu-system-arm -M lm3s6965evb`` whose UART0 is wired to QEMU's
stdin/stdout pipes. This process holds the pty *master* and copies bytes between it
and QEMU; clients open the slave through a stable symlink such as ``/tmp/vb/board0``.

Like an Arduino that resets on DTR, a board reboots whenever someone opens its port
(seen with inotify ``IN_OPEN`` on the ``/dev/pts/N`` node), so the opener always sees
the banner. An upload replaces ``DIR/.boardK/firmware.elf`` and sends us SIGUSR1; every
board whose firmware changed then reboots. ``DIR/.boardK/state.json`` tells uploaders
where the board is and how often it has booted, so they can wait for the reboot.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import termios
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import trio

from pio_remote.daemon import pid_alive

from .elf import is_arm_elf
from .host import (
    DEFAULT_FIRMWARE,
    IN_CLOSE_NOWRITE,
    IN_CLOSE_WRITE,
    IN_IGNORED,
    IN_OPEN,
    READ_CHUNK,
    RELOAD_SIGNAL,
    RESET_MARKER,
    Inotify,
    board_home,
    die_with_parent,
    make_raw,
    registry_entry,
    run_dir,
    write_json_atomic,
)

QEMU = "qemu-system-arm"


class Board:
    """One emulated board: a pty pair, its symlink, and the QEMU process behind it."""

    def __init__(
        self, index: int, directory: Path, *, verbose: bool = False, gdb: GdbStub | None = None
    ) -> None:
        self.name = f"board{index}"
        self.gdb_port = gdb.port + index if gdb else None
        self.gdb_wait = bool(gdb and gdb.wait)
        self.link = directory / self.name
        self.home = board_home(directory, self.name)
        self.firmware = self.home / "firmware.elf"
        self.verbose = verbose
        self.pts = ""
        self.master = -1
        self.slave = -1
        self.clients = 0
        self.muted = False
        self.boots = 0
        self.sha256 = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._pidfd = -1
        self._to_qemu = -1
        self._from_qemu = -1
        self._requests, self._wakeups = trio.open_memory_channel[str](math.inf)

    def log(self, msg: str) -> None:
        """Diagnostics go to stderr so stdout stays a clean machine-readable protocol."""
        if self.verbose:
            print(f"{self.name}: {msg}", file=sys.stderr, flush=True)

    def setup(self, firmware: bytes) -> None:
        """Create the pty, flash the initial firmware and publish the symlink."""
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.firmware.with_suffix(".tmp")
        tmp.write_bytes(firmware)
        os.replace(tmp, self.firmware)
        self.master, self.slave = os.openpty()
        # Holding the slave open keeps master reads from failing with EIO while no
        # client is attached, and keeps our raw termios settings across client opens.
        make_raw(self.slave)
        os.set_blocking(self.master, False)
        self.pts = os.ttyname(self.slave)
        tmp_link = self.link.with_name(f".{self.name}.link.tmp")
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(self.pts)
        os.replace(tmp_link, self.link)
        run_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
        write_json_atomic(
            registry_entry(self.pts), {"state": str(self.home / "state.json"), "pid": os.getpid()}
        )

    def request_restart(self, reason: str) -> None:
        """Ask the board to reboot; requests that pile up during a reboot collapse.

        Output is muted at once, so that a client who just opened the port sees only
        the fresh boot and never the tail of the old one.
        """
        self.muted = True
        self._requests.send_nowait(reason)

    @property
    def dropping_output(self) -> bool:
        """UART output nobody can see is discarded, as on a real unplugged serial line."""
        return self.muted or self.clients <= 0

    def take_reset_marker(self) -> bool:
        """True once after an uploader flashed this board (see client.upload_firmware)."""
        try:
            (self.home / RESET_MARKER).unlink()
        except FileNotFoundError:
            return False
        return True

    def firmware_changed(self) -> bool:
        """True if the flashed file differs from the image the board last booted."""
        try:
            data = self.firmware.read_bytes()
        except OSError:
            return False
        return hashlib.sha256(data).hexdigest() != self.sha256

    def write_state(self, running: bool, note: str = "") -> None:
        """Publish where and what this board is for uploaders and tests."""
        write_json_atomic(
            self.home / "state.json",
            {
                "name": self.name,
                "link": str(self.link),
                "pts": self.pts,
                "pid": os.getpid(),
                "qemu_pid": self.proc.pid if self.proc else None,
                "boots": self.boots,
                "firmware_sha256": self.sha256,
                "running": running,
                "gdb": f"127.0.0.1:{self.gdb_port}" if self.gdb_port else None,
                "note": note,
            },
        )

    def _spawn(self) -> None:
        """Boot a fresh QEMU on a snapshot of the current firmware."""
        data = self.firmware.read_bytes()
        running = self.home / "running.elf"
        running.write_bytes(data)
        self.sha256 = hashlib.sha256(data).hexdigest()
        # Nothing from before the reset may leak into the new boot: neither old board
        # output nor bytes the client sent while the board was restarting.
        termios.tcflush(self.slave, termios.TCIOFLUSH)
        self.muted = False
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        with open(self.home / "qemu.log", "ab") as log:
            try:
                self.proc = subprocess.Popen(
                    [
                        QEMU,
                        "-M",
                        "lm3s6965evb",
                        "-nographic",
                        "-monitor",
                        "none",
                        "-serial",
                        "stdio",
                        "-kernel",
                        str(running),
                        *self._gdb_args(),
                    ],
                    stdin=in_r,
                    stdout=out_w,
                    stderr=log,
                    start_new_session=True,
                    preexec_fn=die_with_parent,  # we fork from the main thread only
                )
            finally:
                os.close(in_r)
                os.close(out_w)
        self._to_qemu, self._from_qemu = in_w, out_r
        os.set_blocking(in_w, False)
        os.set_blocking(out_r, False)
        self._pidfd = os.pidfd_open(self.proc.pid)
        self.boots += 1
        self.write_state(True)

    def _gdb_args(self) -> list[str]:
        """QEMU's gdbstub on loopback; ``-S`` holds the CPU at reset until gdb continues."""
        if self.gdb_port is None:
            return []
        return ["-gdb", f"tcp:127.0.0.1:{self.gdb_port}", *(["-S"] if self.gdb_wait else [])]

    def _kill(self) -> None:
        """Stop QEMU at once (it holds no state worth a graceful shutdown) and reap it."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
        for fd in (self._pidfd, self._to_qemu, self._from_qemu):
            if fd >= 0:
                os.close(fd)
        self._pidfd = self._to_qemu = self._from_qemu = -1

    async def _write_all(self, fd: int, data: bytes, *, droppable: bool) -> bool:
        """Write everything, waiting on backpressure; False if the peer is gone."""
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                if droppable and self.dropping_output:
                    return True
                await trio.lowlevel.wait_writable(fd)
            except OSError:  # EPIPE from a dead QEMU, EIO from a closing pty
                return False
        return True

    async def _pump_out(self) -> None:
        """QEMU UART TX -> pty master."""
        fd = self._from_qemu
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                continue
            if not data:
                return
            if not self.dropping_output:
                await self._write_all(self.master, data, droppable=True)

    async def _pump_in(self) -> None:
        """pty master -> QEMU UART RX; input to a dead board is discarded, not queued."""
        alive = True
        while True:
            await trio.lowlevel.wait_readable(self.master)
            try:
                data = os.read(self.master, READ_CHUNK)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                await trio.sleep(0.05)
                continue
            if alive:
                alive = await self._write_all(self._to_qemu, data, droppable=False)

    async def _watch_exit(self) -> None:
        """Record a QEMU that exits on its own (bad image, crash); the port stays up."""
        await trio.lowlevel.wait_readable(self._pidfd)
        assert self.proc is not None
        code = self.proc.wait()
        self.log(f"qemu exited with status {code}, see {self.home / 'qemu.log'}")
        self.write_state(False, f"qemu exited with status {code}")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Boot, then reboot on every request until cancelled."""
        try:
            self._spawn()
            task_status.started()
            while True:
                async with trio.open_nursery() as session:
                    session.start_soon(self._pump_out)
                    session.start_soon(self._pump_in)
                    session.start_soon(self._watch_exit)
                    reason = await self._wakeups.receive()
                    session.cancel_scope.cancel()
                while True:
                    try:
                        self._wakeups.receive_nowait()
                    except trio.WouldBlock:
                        break
                self.log(f"reset ({reason})")
                self._kill()
                self._spawn()
        finally:
            self._kill()

    def teardown(self) -> None:
        """Kill QEMU and remove every trace: symlink, pointer file, private directory."""
        self._kill()
        try:
            if self.link.is_symlink() and os.readlink(self.link) == self.pts:
                self.link.unlink()
        except OSError:
            pass
        if self.pts:
            registry_entry(self.pts).unlink(missing_ok=True)
        shutil.rmtree(self.home, ignore_errors=True)
        for fd in (self.master, self.slave):
            if fd >= 0:
                os.close(fd)
        self.master = self.slave = -1


@dataclass(frozen=True)
class GdbStub:
    """QEMU's gdbstub for every board: board K listens on 127.0.0.1:(port + K).

    With ``wait`` each boot holds the CPU at the reset vector until a debugger
    continues it, so a breakpoint at ``main`` can be hit (QEMU's ``-S``).
    """

    port: int
    wait: bool = False


class FarmError(Exception):
    """The farm cannot start (missing QEMU, bad firmware, board already served)."""


def _check_not_running(directory: Path, name: str) -> None:
    """Refuse to steal a board from a live farm; clear leftovers of a dead one."""
    state = board_home(directory, name) / "state.json"
    try:
        pid = int(json.loads(state.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        pid = 0
    if pid and pid != os.getpid() and pid_alive(pid):
        raise FarmError(f"{directory / name} is already served by process {pid}")
    link = directory / name
    if link.is_symlink():
        link.unlink()
    shutil.rmtree(board_home(directory, name), ignore_errors=True)


async def _watch_opens(inotify: Inotify, boards: dict[int, Board]) -> None:
    """Reset a board whenever its pty is opened; count clients to know when to drop output."""
    while True:
        opened: set[int] = set()
        for wd, mask in await inotify.read_events():
            board = boards.get(wd)
            if board is None or mask & IN_IGNORED:
                continue
            if mask & IN_OPEN:
                board.clients += 1
                opened.add(wd)
            if mask & (IN_CLOSE_WRITE | IN_CLOSE_NOWRITE):
                board.clients = max(0, board.clients - 1)
        for wd in opened:
            boards[wd].request_restart("port opened")


async def _watch_stdin_eof(cancel: trio.CancelScope) -> None:
    """Stop when our parent closes our stdin, e.g. because it died without signalling us."""
    os.set_blocking(0, False)
    while True:
        await trio.lowlevel.wait_readable(0)
        try:
            if not os.read(0, 4096):
                cancel.cancel()
                return
        except BlockingIOError:
            continue


async def run_farm(
    directory: Path,
    count: int,
    firmware: Path = DEFAULT_FIRMWARE,
    *,
    verbose: bool = False,
    watch_stdin: bool = False,
    out: TextIO | None = None,
    gdb: GdbStub | None = None,
) -> None:
    """Serve ``count`` boards under ``directory`` until SIGINT/SIGTERM/SIGHUP, then clean up."""
    out = out or sys.stdout
    if shutil.which(QEMU) is None:
        raise FarmError(f"{QEMU} not found on PATH (apt-get install qemu-system-arm)")
    data = Path(firmware).read_bytes()
    problem = is_arm_elf(data)
    if problem:
        raise FarmError(f"{firmware}: {problem}")
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        _check_not_running(directory, f"board{i}")
    if gdb is not None and not 0 < gdb.port <= 65535 - count + 1:
        raise FarmError(f"--gdb-port {gdb.port}: the boards' ports must lie within 1..65535")
    boards = [Board(i, directory, verbose=verbose, gdb=gdb) for i in range(count)]
    inotify = Inotify()
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    with trio.open_signal_receiver(*stop_signals, RELOAD_SIGNAL) as signals:
        try:
            by_wd: dict[int, Board] = {}
            for board in boards:
                board.setup(data)
                mask = IN_OPEN | IN_CLOSE_WRITE | IN_CLOSE_NOWRITE
                by_wd[inotify.add_watch(board.pts, mask)] = board
            async with trio.open_nursery() as nursery:
                for board in boards:
                    await nursery.start(board.run)
                nursery.start_soon(_watch_opens, inotify, by_wd)
                if watch_stdin:
                    nursery.start_soon(_watch_stdin_eof, nursery.cancel_scope)
                for board in boards:
                    print(f"{board.name} {board.link} -> {board.pts}", file=out)
                    if board.gdb_port is not None:
                        print(f"{board.name} gdb 127.0.0.1:{board.gdb_port}", file=out)
                print("ready", file=out, flush=True)
                async for signum in signals:
                    if signum != RELOAD_SIGNAL:
                        break
                    for board in boards:
                        if board.take_reset_marker() or board.firmware_changed():
                            board.request_restart("flashed")
                nursery.cancel_scope.cancel()
        finally:
            for board in boards:
                board.teardown()
            inotify.close()
