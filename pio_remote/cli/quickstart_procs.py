"""Quickstart's children: start each and wait for its ready line, then watch them all.

Built on trio's process API, so it runs wherever trio does (Linux, macOS, Windows):
per child one task copies its stdout to its log and looks for the ready line, and one
waits for it to exit. The first child that exits, or the first stop signal, ends the
group; ``stop()`` then stops the rest, last started first. Children run in their own
process groups (sessions on POSIX), so Ctrl-C in the terminal reaches only quickstart,
which stops them in order.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import trio

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
# After a child exits, how long its stdout may take to drain into its log (a grandchild
# that inherited the pipe can hold it open).
DRAIN_S = 2.0


class StartError(Exception):
    """A child did not come up in time; the message says which and shows its log."""


@dataclass
class Child:
    name: str
    process: trio.Process
    log: IO[bytes]
    log_path: Path
    ready: re.Match[str] | None = None
    came_up: trio.Event = field(default_factory=trio.Event)
    drained: trio.Event = field(default_factory=trio.Event)

    def tail(self, count: int = 5) -> str:
        lines = self.log_path.read_text(errors="replace").strip().splitlines()[-count:]
        if not lines:
            return ""
        return f"; last lines of {self.log_path}:\n  " + "\n  ".join(lines)

    def exited(self) -> str:
        code = self.process.returncode
        assert code is not None
        if code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        return f"the {self.name} (pid {self.process.pid}) {how}{self.tail()}"


def _own_group() -> dict[str, Any]:
    """Popen options that keep the terminal's Ctrl-C away from a child."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


class Group:
    """The children of one quickstart, in start order, watched from ``nursery``."""

    def __init__(self, nursery: trio.Nursery, logs: Path) -> None:
        self.nursery = nursery
        self.logs = logs
        self.children: list[Child] = []
        self.ended = trio.Event()
        self.failure: str | None = None  # what ended the group, if not a stop signal
        self.scope = trio.CancelScope()  # quickstart's work, cancelled when the group ends
        self._stopping = False

    def end(self, failure: str | None) -> None:
        """The first ending wins: a child's exit (``failure``) or a stop signal (None)."""
        if self.ended.is_set() or self._stopping:
            return
        self.failure = failure
        self.ended.set()
        self.scope.cancel()

    async def end_on(self, signals: AsyncIterator[int]) -> None:
        async for _ in signals:
            self.end(None)

    async def start(self, name: str, argv: list[str], env: dict[str, str], pattern: str) -> Child:
        """Start a child and return once it printed a line matching ``pattern``."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{name.split()[0].lower()}.log"
        log = open(log_path, "wb")  # noqa: SIM115  (closed in stop())
        try:
            process = await trio.lowlevel.open_process(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                **_own_group(),
            )  # fmt: skip
        except BaseException:
            log.close()
            raise
        child = Child(name, process, log, log_path)
        self.children.append(child)
        self.nursery.start_soon(self._pump, child, re.compile(pattern))
        self.nursery.start_soon(self._watch, child)
        with trio.move_on_after(START_TIMEOUT_S):
            await child.came_up.wait()
        if child.ready is None:
            raise StartError(f"the {name} was not ready after {START_TIMEOUT_S:g} s{child.tail()}")
        return child

    async def _pump(self, child: Child, regex: re.Pattern[str]) -> None:
        """Copy the child's stdout to its log; note its ready line."""
        assert child.process.stdout is not None
        buf = b""
        try:
            async for data in child.process.stdout:
                child.log.write(data)
                child.log.flush()
                if child.ready is not None:
                    continue
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if m := regex.search(line.decode(errors="replace")):
                        child.ready = m
                        child.came_up.set()
                        break
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            child.drained.set()

    async def _watch(self, child: Child) -> None:
        """When the child exits on its own, the group ends with what happened."""
        await child.process.wait()
        with trio.move_on_after(DRAIN_S):
            await child.drained.wait()
        self.end(child.exited())

    async def stop(self) -> list[str]:
        """Stop the children, last started first; say what was stopped. Shielded: it runs
        however quickstart ends."""
        self._stopping = True
        stopped = []
        with trio.CancelScope(shield=True):
            for child in reversed(self.children):
                if child.process.returncode is None:
                    await _terminate(child.process)
                    stopped.append(f"the {child.name} (pid {child.process.pid})")
                if child.process.stdout is not None:
                    await child.process.stdout.aclose()
                child.log.close()
        self.children.clear()
        return stopped


async def _terminate(process: trio.Process) -> None:
    """SIGTERM to the child's whole group (QEMU runs under the board), then SIGKILL; on
    Windows, TerminateProcess."""
    for polite in (True, False):
        _signal_group(process, polite)
        with trio.move_on_after(STOP_GRACE_S):
            await process.wait()
            return


def _signal_group(process: trio.Process, polite: bool) -> None:
    killpg: Callable[[int, int], None] | None = getattr(os, "killpg", None)
    if killpg is None:
        (process.terminate if polite else process.kill)()
        return
    try:
        killpg(process.pid, signal.SIGTERM if polite else signal.SIGKILL)
    except ProcessLookupError:
        pass


async def run_quiet(argv: list[str], env: dict[str, str]) -> str:
    """A short command's output, stdout then stderr."""
    with trio.fail_after(60):
        result = await trio.run_process(
            argv, env=env, stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True,
            check=False,
        )  # fmt: skip
    return (result.stdout + result.stderr).decode(errors="replace").rstrip()
