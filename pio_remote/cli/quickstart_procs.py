"""Quickstart's children: start each and wait for its ready line, then watch them all.

No threads and no polling: one ``select`` waits on every child's stdout, a pidfd per
child (readable when it exits) and a socket that stop signals write to. Children run
in their own sessions (Ctrl-C in the terminal reaches only quickstart, which stops them
in order) and get SIGTERM from the kernel if quickstart dies first.
"""

from __future__ import annotations

import ctypes
import os
import re
import select
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
_PR_SET_PDEATHSIG = 1


class StartError(Exception):
    """A child did not come up; the message says which and shows its last log lines."""


class Interrupted(StartError):
    """A stop signal arrived while starting."""


class StopSignals:
    """SIGINT/SIGTERM/SIGHUP as readable bytes on a socket that ``select`` can wait on."""

    def __enter__(self) -> StopSignals:
        self._read, self._write = socket.socketpair()
        for sock in (self._read, self._write):
            sock.setblocking(False)
        self._old_fd = signal.set_wakeup_fd(self._write.fileno())
        self._old = {sig: signal.signal(sig, self._note) for sig in STOP_SIGNALS}
        return self

    def _note(self, signum: int, frame: FrameType | None) -> None:
        """The wakeup fd carries the signal number; nothing else to do here."""

    def fileno(self) -> int:
        return self._read.fileno()

    def take(self) -> int | None:
        try:
            data = self._read.recv(64)
        except BlockingIOError:
            return None
        return data[-1] if data else None

    def __exit__(self, *exc: object) -> None:
        signal.set_wakeup_fd(self._old_fd)
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._read.close()
        self._write.close()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when quickstart goes away."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]
    log_path: Path
    pidfd: int
    ready: re.Match[str] | None = None
    buf: bytes = field(default=b"")

    @property
    def out(self) -> int:
        assert self.popen.stdout is not None
        return self.popen.stdout.fileno()

    def pump(self) -> list[str]:
        """Read what the child printed, copy it to its log; return the complete lines."""
        try:
            data = os.read(self.out, 65536)
        except BlockingIOError:
            return []
        self.log.write(data)
        self.log.flush()
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        return [line.decode(errors="replace") for line in lines]

    def tail(self, count: int = 5) -> str:
        lines = self.log_path.read_text(errors="replace").strip().splitlines()[-count:]
        return (
            ("; last lines of " + str(self.log_path) + ":\n  " + "\n  ".join(lines))
            if lines
            else ""
        )

    def exited(self) -> str:
        code = self.popen.wait()
        how = (
            f"was killed by {signal.Signals(-code).name}"
            if code < 0
            else f"exited with code {code}"
        )
        return f"the {self.name} (pid {self.popen.pid}) {how}{self.tail()}"


class Group:
    """The children of one quickstart, in start order."""

    def __init__(self, logs: Path, signals: StopSignals):
        self.logs = logs
        self.signals = signals
        self.children: list[Child] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], pattern: str) -> Child:
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{name.split()[0].lower()}.log"
        log = open(log_path, "wb")  # noqa: SIM115  (closed in stop())
        popen = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
            start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        child = Child(name, popen, log, log_path, os.pidfd_open(popen.pid))
        os.set_blocking(child.out, False)
        self.children.append(child)
        child.ready = self._wait_ready(child, re.compile(pattern))
        return child

    def _wait_ready(self, child: Child, regex: re.Pattern[str]) -> re.Match[str]:
        deadline = time.monotonic() + START_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([child.out, child.pidfd, self.signals], [], [], left)
            if self.signals in ready and self.signals.take() is not None:
                raise Interrupted(f"interrupted while starting the {child.name}")
            if child.out in ready:
                for line in child.pump():
                    if m := regex.search(line):
                        return m
            elif child.pidfd in ready:
                raise StartError(child.exited())
        raise StartError(
            f"the {child.name} was not ready after {START_TIMEOUT_S:g} s{child.tail()}"
        )

    def watch(self) -> str | None:
        """Until a stop signal (None) or a child's exit (what happened, as a message)."""
        while True:
            fds: list[Any] = [self.signals]
            for child in self.children:
                fds += [child.out, child.pidfd]
            ready, _, _ = select.select(fds, [], [])
            if self.signals in ready and self.signals.take() is not None:
                return None
            for child in self.children:
                if child.out in ready:
                    child.pump()
                if child.pidfd in ready:
                    return child.exited()

    def stop(self) -> list[str]:
        """Stop the children, last started first; say what was stopped."""
        stopped = []
        for child in reversed(self.children):
            if child.popen.poll() is None:
                _terminate(child.popen)
                stopped.append(f"the {child.name} (pid {child.popen.pid})")
            os.close(child.pidfd)
            assert child.popen.stdout is not None
            child.popen.stdout.close()
            child.log.close()
        self.children.clear()
        return stopped


def _terminate(popen: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(popen.pid, sig)
        except ProcessLookupError:
            pass
        try:
            popen.wait(STOP_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def run_quiet(argv: list[str], env: dict[str, str]) -> str:
    """A short command's output, stdout then stderr."""
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    return (result.stdout + result.stderr).rstrip()
