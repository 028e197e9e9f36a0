"""One way to run a child process from the tests and from `scripts/bench`.

``Proc`` starts a child in its own process group, watches its stdout (and its
stderr, unless that goes to a log file) with ``pio_remote.vboard.linewatch``, waits on
what it prints with a deadline, and stops the whole group, SIGKILL if it must.
The benchmarks import this file by putting tests/ on sys.path.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from pio_remote.vboard.linewatch import LineWatcher

__all__ = ["LineWatcher", "Proc", "raise_nofile"]

STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
# After the group is gone, how long to wait for the last output (a surviving grandchild
# in another group could hold the pipe open forever).
DRAIN_TIMEOUT = 2.0


def raise_nofile(want: int) -> int:
    """Raise this process's open-file limit towards ``want`` (capped by the hard limit).

    Returns the soft limit now in force; children started afterwards inherit it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


class Proc:
    """A child in its own process group, its output watched as it comes.

    ``log``: stderr goes to this file (a chatty child, such as a relay with
    10,000 agents, is best kept out of memory); otherwise it is watched too.
    ``stdin``: a pipe to write to (``write``); otherwise /dev/null.
    ``merge_stderr``: stderr goes into stdout, so that both are read as one sequence of lines.
    """

    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        log: Path | None = None,
        *,
        cwd: Path | None = None,
        stdin: bool = False,
        nofile: int = 0,
        merge_stderr: bool = False,
    ):
        self.args = list(args)
        self.log = log
        self._log = open(log, "wb") if log is not None else None  # closed in stop()
        self.popen = subprocess.Popen(
            self.args,
            env=env,
            cwd=cwd,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=(
                subprocess.STDOUT
                if merge_stderr
                else self._log
                if self._log is not None
                else subprocess.PIPE
            ),
            start_new_session=True,
            preexec_fn=(lambda: raise_nofile(nofile)) if nofile else None,
        )
        assert self.popen.stdout is not None
        self.out = LineWatcher(self.popen.stdout)
        self.err = LineWatcher(self.popen.stderr) if self.popen.stderr is not None else None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def lines(self) -> list[str]:
        return self.out.lines

    def wait_for(
        self, pattern: str, timeout: float = STARTUP_TIMEOUT, start: int = 0
    ) -> re.Match[str]:
        """The first stdout line (from line ``start`` on) matching ``pattern``; fails with
        what the child said."""
        if m := self.out.wait_for(pattern, timeout, start):
            return m
        raise AssertionError(
            f"{' '.join(self.args)} never printed /{pattern}/ (exit {self.popen.poll()}); "
            f"stdout so far: {self.lines[max(start, len(self.lines) - 20) :]!r}; "
            f"stderr tail:\n{self.stderr_tail()}"
        )

    def wait_for_bytes(
        self, pattern: bytes, *, err: bool = False, timeout: float = STARTUP_TIMEOUT
    ) -> re.Match[bytes]:
        """``pattern`` anywhere in stdout (or stderr), across lines."""
        watcher = self.err if err else self.out
        assert watcher is not None, "stderr goes to a log file"
        if m := watcher.wait_for_bytes(pattern, timeout):
            return m
        raise AssertionError(
            f"{' '.join(self.args)} never printed {pattern!r} on {'stderr' if err else 'stdout'}"
            f"; stdout={bytes(self.out.data)[-2000:]!r} stderr={self.stderr_tail(2000)!r} "
            f"exit={self.popen.poll()}"
        )

    def stderr_text(self) -> str:
        """All the child printed on stderr so far (all of it, once it has stopped)."""
        assert self.err is not None, "stderr goes to a log file"
        return self.err.text()

    def stderr_tail(self, size: int = 3000) -> str:
        if self.err is not None:
            return self.err.text()[-size:]
        try:
            return self.log.read_bytes()[-size:].decode(errors="replace") if self.log else ""
        except OSError:
            return "(no log)"

    def write(self, data: bytes) -> None:
        assert self.popen.stdin is not None, "started without stdin=True"
        self.popen.stdin.write(data)
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            self.popen.stdin.close()

    def finished(self, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Wait until the child exits by itself; its exit code and all it printed."""
        code = self.popen.wait(timeout)
        self.out.wait_closed(timeout)
        stderr = ""
        if self.err is not None:
            self.err.wait_closed(timeout)
            stderr = self.err.text()
        return subprocess.CompletedProcess(self.args, code, self.out.text(), stderr)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signal the process group and wait; SIGKILL it if it does not exit in time."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        for watcher in (self.out, self.err):  # all it printed, read to the end
            if watcher is not None:
                watcher.wait_closed(DRAIN_TIMEOUT)
        try:
            self.close_stdin()
        except OSError:
            pass  # the child is gone: what was buffered has nowhere to go
        if self._log is not None:
            self._log.close()
        return self.popen.returncode


def _pidfds(pids: Sequence[int]) -> list[int]:
    """Descriptors that turn readable when each process exits (already gone: none)."""
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            pass
    return fds


def wait_gone(pids: Sequence[int], timeout: float) -> bool:
    """Wait for every process in ``pids`` to exit (a zombie counts as exited), on the
    kernel's exit notification rather than by polling; False at the deadline."""
    import select

    fds = _pidfds(pids)
    try:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        pending = set(fds)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for fd, _ in poller.poll(left * 1000):
                pending.discard(fd)
                poller.unregister(fd)
        return True
    finally:
        for fd in fds:
            os.close(fd)


async def wait_gone_async(pids: Sequence[int]) -> None:
    """``wait_gone`` for trio tests: put it under ``trio.fail_after``."""
    import trio

    fds = _pidfds(pids)
    try:
        for fd in fds:
            await trio.lowlevel.wait_readable(fd)
    finally:
        for fd in fds:
            os.close(fd)


def tls_files(directory: Path, host: str) -> tuple[Path, Path, Path]:
    """(certificate chain, key, CA) for a relay serving ``host``, from a throwaway trustme CA:
    the relay takes the first two, a client that should trust it takes the CA."""
    import trustme

    ca = trustme.CA()
    issued = ca.issue_cert(host)
    cert, key, ca_file = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    for i, blob in enumerate(issued.cert_chain_pems):  # leaf first, then intermediates
        blob.write_to_path(str(cert), append=i > 0)
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return cert, key, ca_file
