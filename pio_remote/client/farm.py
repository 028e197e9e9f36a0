"""The client side of `pio-remote test`: one suite on many boards, each on its own.

    boards = await find_boards(agent, label, upload_port="/dev/ttyACM*")
    await stage_suite(agent, suite, hashes)        # send the image once per agent
    report = await run_on_board(agent, board, suite, options, output)

Task tree of a run (client/testrun.py): client command -> one task per agent
(session) -> one task per board, at most ``--jobs`` at once, each in its own
cancel scope. A board that fails, hangs or vanishes becomes an ERRORED suite
for that board; it never stops the others.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from pio_remote.client import upload as flash
from pio_remote.client.api import AgentSession, RemoteError, wait_result
from pio_remote.client.reports import CaseReport, SuiteReport
from pio_remote.net.channel import ChannelClosed
from pio_remote.net.link import RelayError
from pio_remote.wire import transfer
from pio_remote.wire.unity import ERRORED, FAILED

# Time an upload may take on top of --timeout before the client gives up on a
# board: flashing a large image over a slow bootloader takes minutes.
UPLOAD_GRACE = 300.0
GLOB_CHARS = frozenset("*?[")


def is_glob(port: str) -> bool:
    return bool(GLOB_CHARS & set(port))


@dataclass(frozen=True)
class Board:
    agent: str  # the agent id, for the session
    label: str  # the agent as the user names it
    port: str
    test_port: str = ""


@dataclass
class Suite:
    """One test image: a PlatformIO suite build, or a --firmware file."""

    env: str
    name: str
    files: list[Path]
    ini: Path | None = None  # platformio.ini, so the agent sees upload_* options
    test_dir: str = ""
    upload_port: str = ""
    test_port: str = ""
    test_speed: int = 0
    project_env: bool = True  # False for --firmware: no environment on the agent


@dataclass
class RunOptions:
    timeout: float = 120.0
    no_reset: bool = False
    without_uploading: bool = False
    without_testing: bool = False
    farm: bool = False
    wait: float = 0.0  # seconds to wait for a board another client leased
    notice: Callable[[Board, str], None] | None = None  # what the agent says meanwhile
    # Each test.run event as it comes, with the board's report so far; ({} at the start).
    watch: Callable[[Board, SuiteReport, dict[str, Any]], None] | None = None


async def find_boards(agent: AgentSession, label: str, upload_port: str) -> list[Board]:
    """The boards to test on one agent: a named port, a glob's matches, or every
    port an [[uploader]] claims."""
    if upload_port and not is_glob(upload_port):
        return [Board(agent.agent_id, label, upload_port)]
    found = await agent.call("test.boards", upload_port=upload_port)
    return [Board(agent.agent_id, label, b["port"], b["test_port"]) for b in found]


async def stage_suite(
    agent: AgentSession, suite: Suite, hashes: flash.Hashes
) -> list[tuple[Path, transfer.FileEntry]]:
    """Send the image (and platformio.ini) once per agent, before its boards start."""
    files = await hashes.get([*suite.files, *([suite.ini] if suite.ini else [])])
    await flash.stage(agent, files)
    return files


def upload_params(suite: Suite, files: list[tuple[Path, transfer.FileEntry]]) -> dict[str, Any]:
    """``test.run``'s ``upload``: upload.flash's parameters for staged files."""
    firmware = [e for p, e in files if p != suite.ini]
    ini = next((e.sha256 for p, e in files if p == suite.ini), None)
    return {
        "env": suite.env if suite.project_env else None,
        "source": firmware[0].name,
        "files": [e.to_json() for e in firmware],
        "ini": ini,
        "targets": ["upload"],
    }


async def run_on_board(
    agent: AgentSession,
    board: Board,
    suite: Suite,
    upload: dict[str, Any] | None,
    options: RunOptions,
    output: Callable[[Board, bytes], None] | None = None,
    restage: Callable[[], Awaitable[object]] | None = None,
) -> SuiteReport:
    """Flash (``upload``: upload.flash's parameters, or None) and test one suite on one
    board; every failure ends up in the report. ``restage`` sends the files again if
    the agent evicted them meanwhile."""
    # --test-port or the ini's test_port names one port: it wins on a single board; on a
    # farm each board's own ([[uploader]] test_port, else its upload port) is used.
    test_port = suite.test_port if suite.test_port and not options.farm else ""
    report = SuiteReport(
        suite.env,
        suite.name,
        agent=board.label,
        port=board.port,
        test_port=test_port or board.test_port or board.port,
        test_dir=suite.test_dir,
        farm=options.farm,
    )
    params: dict[str, Any] = {
        "port": board.port,
        "test_port": test_port,
        "test_speed": suite.test_speed,
        "no_reset": options.no_reset,
        "timeout": options.timeout,
        "testing": not options.without_testing,
        "wait": options.wait,
        "upload": None if options.without_uploading else upload,
    }
    started = time.monotonic()  # a suite that fails (after a --wait, say) took this long
    if options.watch is not None:
        options.watch(board, report, {})
    try:
        with trio.fail_after(options.timeout + options.wait + UPLOAD_GRACE):
            value = await _call(agent, board, params, report, output, options)
            if "missing" in value and restage is not None:  # evicted since staging: once more
                await restage()
                value = await _call(agent, board, params, report, output, options)
            if "missing" in value:
                raise RemoteError(f"agent '{agent.agent_id}' lost the staged image: run again")
    except trio.TooSlowError:
        report.fail(f"no result from the agent within {options.timeout + UPLOAD_GRACE:g} s")
        report.duration = round(time.monotonic() - started, 3)
        return report
    except (RemoteError, ChannelClosed, RelayError) as exc:
        report.fail(str(exc))
        report.duration = round(time.monotonic() - started, 3)
        return report
    report.test_port = str(value.get("test_port") or report.test_port)
    report.duration = float(value.get("duration") or 0.0)
    if value.get("status") == ERRORED:
        report.fail(str(value.get("error") or "the suite did not finish"))
    elif value.get("status") == FAILED and not report.count(FAILED):
        summary = value.get("summary") or {}
        report.cases.append(
            CaseReport(suite.name, FAILED, f"Unity reported {summary.get('failures')} failure(s)")
        )
    return report


async def _call(
    agent: AgentSession,
    board: Board,
    params: dict[str, Any],
    report: SuiteReport,
    output: Callable[[Board, bytes], None] | None,
    options: RunOptions,
) -> dict[str, Any]:
    notice, watch = options.notice, options.watch
    async with agent.open_call("test.run", **params) as call:
        while call.result is None:
            item = await call.receive()
            if isinstance(item, bytes):
                if output is not None:
                    output(board, item)
            elif isinstance(item, dict):
                if "waiting" in item and notice is not None:
                    notice(board, str(item["waiting"]))
                _event(report, item)
                if watch is not None:
                    watch(board, report, item)
        value: dict[str, Any] = await wait_result(call)
    return value


def _event(report: SuiteReport, event: dict[str, Any]) -> None:
    if "case" in event:
        c = event["case"]
        report.cases.append(
            CaseReport(
                name=str(c["name"]),
                status=str(c["status"]),
                message=str(c.get("message") or ""),
                stdout=str(c.get("stdout") or ""),
                duration=float(c.get("duration") or 0.0),
                file=str(c.get("file") or ""),
                line=int(c.get("line") or 0),
            )
        )
    elif "restarted" in event:
        report.cases.clear()  # those belonged to the run the reset cut short


# ---- suites in a PlatformIO project -----------------------------------------------------


def discover_suites(test_dir: Path) -> list[str]:
    """PlatformIO's rule: every folder named test_* under test_dir, by relative path."""
    if not test_dir.is_dir():
        return []
    found: list[str] = []

    def walk(path: Path) -> None:
        for child in sorted(p for p in path.iterdir() if p.is_dir()):
            if child.name.startswith("test_"):
                found.append(child.relative_to(test_dir).as_posix())
            else:
                walk(child)

    walk(test_dir)
    return found


def select_suites(names: list[str], filters: list[str], ignores: list[str]) -> list[str]:
    """-f/test_filter keeps matching suites (all if none given); -i/test_ignore drops."""
    chosen = [n for n in names if not filters or any(fnmatch.fnmatch(n, f) for f in filters)]
    return [n for n in chosen if not any(fnmatch.fnmatch(n, i) for i in ignores)]


# ---- run -t upload on every matching board ----------------------------------------------


@dataclass(frozen=True)
class BoardUpload:
    board: Board
    exit_code: int
    error: str = ""


async def flash_boards(
    agent: AgentSession,
    boards: list[Board],
    firmware: list[tuple[Path, transfer.FileEntry]],
    ini: tuple[Path, transfer.FileEntry] | None,
    output: Callable[[Board], Callable[[bytes], object]],
    started: Callable[[Board], None] | None = None,
    ended: Callable[[BoardUpload], None] | None = None,
    **options: Any,
) -> list[BoardUpload]:
    """Flash every board at once after sending the files once; one result per board.

    Each board runs in its own task and cancel scope: an uploader that fails
    or a port that vanishes is that board's result, never the others'.
    ``started`` and ``ended`` hear of each board as it goes (progress lines).
    """
    await flash.stage(agent, firmware + ([ini] if ini else []))
    results: list[BoardUpload] = []

    async def one(board: Board) -> None:
        if started is not None:
            started(board)
        try:
            _, result = await flash.deploy(
                agent, firmware, ini, output=output(board), port=board.port, **options
            )
            results.append(BoardUpload(board, result.exit_code))
        except (RemoteError, ChannelClosed) as exc:
            results.append(BoardUpload(board, 1, str(exc)))
        if ended is not None:
            ended(results[-1])

    async with trio.open_nursery() as nursery:
        for board in boards:
            nursery.start_soon(one, board)
    return sorted(results, key=lambda r: r.board.port)


# ---- -r: build on the agent ---------------------------------------------------------------


async def build_on_agent(
    agent: AgentSession, project: str, suite: Suite, output: Callable[[bytes], None] | None
) -> dict[str, Any]:
    """``test.build`` on the agent's synced copy; returns ``test.run``'s ``upload``."""
    async with agent.open_call("test.build", project=project, env=suite.env, suite=suite.name) as c:
        while c.result is None:
            item = await c.receive()
            if isinstance(item, bytes) and output is not None:
                output(item)
        value: dict[str, Any] = await wait_result(c)
    if value.get("exit_code") != 0:
        raise RemoteError(
            f"building {suite.env}:{suite.name} on agent '{agent.agent_id}' failed "
            f"(pio test exited {value.get('exit_code')})"
        )
    return {
        "env": suite.env,
        "source": value["source"],
        "files": value["files"],
        "ini": value["ini"],
        "targets": ["upload"],
    }
