"""The remote half of `pio-remote test`: sessions, boards, and each suite on every board.

    plan = TestPlan(project_dir, config, suites, upload_port, farm.RunOptions(), ...)
    await run(plan, ["lab-pi"], TestEvents(say=print))
    plan.report  # reports.RunReport, every board's suites

Task tree: one task per agent holds its session for the whole run; per suite,
the image is prepared once per agent (sent, or built there with -r), then
every board runs it in its own task and cancel scope, at most ``jobs`` at once.
A board, an agent or a build that fails becomes ERRORED suites for the boards
concerned; the run goes on with the rest. What the run has to say (lines,
progress, the boards' raw output) reaches the caller through ``TestEvents``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from pio_remote.client import farm, reports
from pio_remote.client import upload as flash
from pio_remote.client.api import AgentSession, Client, RemoteError
from pio_remote.client.targets import display_name, resolve_targets
from pio_remote.net.channel import ChannelClosed
from pio_remote.net.link import RelayError
from pio_remote.project import ProjectConfig, ProjectError, find_artifacts

SESSION_ERRORS = (RemoteError, ChannelClosed, RelayError)


@dataclass
class TestPlan:
    """What to run, and where the results go (``report``, filled as suites end)."""

    project_dir: Path
    config: ProjectConfig | None
    suites: list[farm.Suite]  # in order; built one at a time
    upload_port: str
    options: farm.RunOptions
    jobs: int  # boards in flight at once; 0: all
    build: bool  # build each suite here with ``pio`` first
    lease: str = ""
    remote_build: bool = False  # -r: the agent builds on its synced copy
    pio: str | None = None  # the local PlatformIO Core, for building here
    report: reports.RunReport = field(init=False)
    planned: int = 0  # suites x boards, once the boards are known

    def __post_init__(self) -> None:
        self.report = reports.RunReport(str(self.project_dir.resolve()))


class BoardOutput(Protocol):
    """The boards' raw output (``pio test -v``)."""

    def __call__(self, board: farm.Board, data: bytes) -> None: ...

    def raw(self, label: str, data: bytes) -> None:
        """Output that belongs to an agent, not a board (a build there)."""

    def flush(self) -> None: ...


def _nothing(*args: object) -> None:
    pass


@dataclass
class TestEvents:
    """What a run tells its caller as it goes; each is optional."""

    say: Callable[[str], None] = _nothing  # a line for the user: synced, suite done...
    error: Callable[[str], None] = _nothing  # an agent that cannot take part
    board: Callable[[farm.Board], object] = _nothing  # found, before any suite runs
    suite_started: Callable[[farm.Board, int, reports.SuiteReport], None] = _nothing
    # Each of the agent's test.run events, with the board's report so far.
    test_event: Callable[[farm.Board, reports.SuiteReport, dict[str, Any]], None] = _nothing
    # The report is final (also in plan.report); ``last``: the board's last suite.
    suite_ended: Callable[[farm.Board, reports.SuiteReport, bool], None] = _nothing
    # Made once the boards are known (True: several, so each line names its board).
    output: Callable[[bool], BoardOutput] | None = None


@dataclass
class Prepared:
    """One suite made ready on one agent: what test.run flashes, or why it cannot."""

    upload: dict[str, Any] | None = None
    restage: Callable[[], Awaitable[object]] | None = None
    error: str = ""


async def run(plan: TestPlan, agents_wanted: list[str], events: TestEvents) -> None:
    """Every suite on every board of ``agents_wanted`` (all online agents if empty).

    Cancelling it (a signal, say) stops the suites in flight; those the caller
    heard start and not end are the ones cut short."""
    async with Client.connect(agents=agents_wanted) as client:
        client.leases = [plan.lease] if plan.lease else client.leases
        agents = await resolve_targets(client, agents_wanted)
        if not agents:
            raise RemoteError("no agents online: start one with 'pio-remote agent start'")
        async with trio.open_nursery() as nursery:
            sessions = {ref: await _open(client, ref, nursery) for ref in agents}
            boards = await _boards(client, sessions, plan, events)
            if not boards:
                raise RemoteError(_no_boards(plan, [display_name(client, a) for a in agents]))
            for board in boards:
                events.board(board)
            plan.planned = len(boards) * len(plan.suites)
            plan.options.farm = len(boards) > 1
            plan.options.notice = lambda board, text: events.say(
                f"{board.label}:{board.port}: {text}"
            )
            output = events.output(plan.options.farm) if events.output else None
            live = {a.agent_id: a for a in sessions.values() if isinstance(a, AgentSession)}
            projects = await _sync(plan, live, events.say) if plan.remote_build else {}
            limit = trio.Semaphore(plan.jobs or len(boards))
            for index, suite in enumerate(plan.suites, 1):
                plan.options.watch = functools.partial(_watch, events, index)
                built = await _build_here(plan, suite) if plan.build else ""
                prepared = {
                    agent_id: await _prepare(plan, suite, agent, projects, built, output)
                    for agent_id, agent in live.items()
                }
                last = index == len(plan.suites)
                await _everywhere(plan, suite, live, prepared, boards, limit, output, events, last)
            nursery.cancel_scope.cancel()


def _watch(
    events: TestEvents,
    index: int,
    board: farm.Board,
    report: reports.SuiteReport,
    event: dict[str, Any],
) -> None:
    if event:
        events.test_event(board, report, event)
    else:
        events.suite_started(board, index, report)


async def _open(client: Client, ref: str, nursery: trio.Nursery) -> AgentSession | RemoteError:
    """A session per agent, held open by a task in ``nursery`` until the run ends."""
    ready = trio.Event()
    box: list[AgentSession | RemoteError] = []

    async def hold() -> None:
        try:
            async with client.session(ref) as agent:
                box.append(agent)
                ready.set()
                await trio.sleep_forever()
        except SESSION_ERRORS as exc:
            if not box:
                box.append(exc if isinstance(exc, RemoteError) else RemoteError(str(exc)))
                ready.set()

    nursery.start_soon(hold)
    await ready.wait()
    return box[0]


async def _boards(
    client: Client,
    sessions: dict[str, AgentSession | RemoteError],
    plan: TestPlan,
    events: TestEvents,
) -> list[farm.Board]:
    found: list[farm.Board] = []
    for ref, agent in sessions.items():
        label = display_name(client, ref)
        if isinstance(agent, RemoteError):
            events.error(f"agent {label}: {agent}")
            plan.report.suites.append(_errored(plan.suites[0], label, "", str(agent)))
            continue
        try:
            found += await farm.find_boards(agent, label, plan.upload_port)
        except SESSION_ERRORS as exc:
            plan.report.suites.append(_errored(plan.suites[0], label, "", str(exc)))
    return found


def _errored(suite: farm.Suite, label: str, port: str, why: str) -> reports.SuiteReport:
    s = reports.SuiteReport(
        suite.env, suite.name, agent=label, port=port, test_dir=suite.test_dir, farm=True
    )
    s.fail(why)
    return s


def _no_boards(plan: TestPlan, agents: list[str]) -> str:
    where = ", ".join(agents)
    if plan.upload_port:
        return f"no port matching '{plan.upload_port}' on agent(s) {where}: see 'device list'"
    return (
        f"agent(s) {where} have no port with an [[uploader]] in agent.toml: pass "
        "--upload-port PORT (or a glob), or add [[uploader]] entries on the agent"
    )


# ---- preparing a suite ------------------------------------------------------------------


async def _build_here(plan: TestPlan, suite: farm.Suite) -> str:
    """Build with the local PlatformIO; returns an error, or "" when the image is ready."""
    pio = plan.pio
    assert pio is not None and plan.config is not None
    argv = [pio, "test", "-d", str(plan.project_dir), "-e", suite.env, "-f", suite.name]
    argv += ["--without-uploading", "--without-testing"]
    # A process trio owns: Ctrl-C or SIGTERM (a cancelled run) stops the build too.
    code = (await trio.run_process(argv, stdout=sys.stderr, check=False)).returncode
    if code != 0:
        return f"building {suite.env}:{suite.name} failed ('{' '.join(argv)}' exited {code})"
    try:
        suite.files = find_artifacts(plan.config, suite.env).files
    except ProjectError as exc:
        return str(exc)
    return ""


async def _sync(
    plan: TestPlan, live: dict[str, AgentSession], say: Callable[[str], None]
) -> dict[str, str]:
    """-r: bring each agent's copy of the project up to date, once per run."""
    projects: dict[str, str] = {}
    for agent_id, agent in live.items():
        try:
            synced = await flash.sync_project(agent, plan.project_dir)
        except SESSION_ERRORS as exc:
            say(f"agent {agent_id}: {exc}")
            continue
        say(
            f"agent {agent_id}: project synced ({synced.updated} updated, {synced.removed} removed)"
        )
        projects[agent_id] = synced.project
    return projects


async def _prepare(
    plan: TestPlan,
    suite: farm.Suite,
    agent: AgentSession,
    projects: dict[str, str],
    built: str,
    output: BoardOutput | None,
) -> Prepared:
    if built:
        return Prepared(error=built)
    if plan.options.without_uploading:
        return Prepared()
    try:
        if plan.remote_build:
            if agent.agent_id not in projects:
                return Prepared(error="the project could not be synced to this agent")
            write = functools.partial(output.raw, agent.agent_id) if output else None
            upload = await farm.build_on_agent(agent, projects[agent.agent_id], suite, write)
            return Prepared(upload)
        paths = [*suite.files, *([suite.ini] if suite.ini else [])]
        async with flash.Hashes(paths) as hashes:
            files = await farm.stage_suite(agent, suite, hashes)
        restage = functools.partial(flash.stage, agent, files)
        return Prepared(farm.upload_params(suite, files), restage)
    except SESSION_ERRORS as exc:
        return Prepared(error=str(exc))


async def _everywhere(
    plan: TestPlan,
    suite: farm.Suite,
    live: dict[str, AgentSession],
    prepared: dict[str, Prepared],
    boards: list[farm.Board],
    limit: trio.Semaphore,
    output: BoardOutput | None,
    events: TestEvents,
    last: bool,
) -> None:
    async def one(board: farm.Board) -> None:
        ready = prepared.get(board.agent)
        if board.agent not in live or ready is None or ready.error:
            why = ready.error if ready else "the agent's session ended"
            report = _errored(suite, board.label, board.port, why)
        else:
            async with limit:
                report = await farm.run_on_board(
                    live[board.agent], board, suite, ready.upload, plan.options, output,
                    ready.restage,
                )  # fmt: skip
        plan.report.suites.append(report)
        events.suite_ended(board, report, last)

    async with trio.open_nursery() as nursery:
        for board in boards:
            nursery.start_soon(one, board)
    if output is not None:
        output.flush()
