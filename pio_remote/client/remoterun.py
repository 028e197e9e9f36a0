"""The remote half of `pio-remote run`: on every agent, flash what was built here, or sync
the project and build there; on a port glob, every matching board at once.

    plan = RunPlan(["upload"], uploads=[EnvUpload("dev", "firmware.bin", [image], ini, port)])
    exit_code = await run(plan, ["lab-pi"], RunEvents())

Task tree: one task per agent, each with its own session and its own errors; on a port
glob, one task per board (``farm.flash_boards``). What the run has to say (lines, the
uploaders' output, transfer progress, each board's outcome) reaches the caller through a
``RunEvents``, whose methods do nothing unless overridden.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from pio_remote.client import farm
from pio_remote.client import upload as flash
from pio_remote.client.api import AgentSession, Client, RemoteError
from pio_remote.client.targets import display_name, resolve_targets
from pio_remote.net.channel import ChannelClosed
from pio_remote.net.link import RelayError
from pio_remote.wire import transfer


@dataclass
class EnvUpload:
    """One environment's files to flash (``env`` None for bare --firmware files)."""

    env: str | None
    source: str
    files: list[Path]
    ini: Path | None
    port: str


@dataclass
class RunPlan:
    """What to do on every agent: flash ``uploads``, or sync and build ``project_dir``."""

    targets: list[str]
    verbose: bool = False
    silent: bool = False
    uploads: list[EnvUpload] = field(default_factory=list)
    project_dir: Path | None = None  # -r: sync this project and build on the agent
    envs: list[str] = field(default_factory=list)
    ports: dict[str, str] = field(default_factory=dict)  # env -> --upload-port or upload_port


class Output(Protocol):
    """Where an uploader's output goes as it comes; ``close`` at the end."""

    def __call__(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class Bar(Protocol):
    """A transfer's progress: ``start(total)`` gives a function told each block's size."""

    def start(self, total: int | None) -> Callable[[int], None] | None: ...

    def stop(self) -> None: ...


class _Nowhere:
    """The Output and the Bar of a caller that wants neither."""

    def __call__(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def start(self, total: int | None) -> Callable[[int], None] | None:
        return None

    def stop(self) -> None:
        pass


class RunEvents:
    """What a run tells its caller. Each method does nothing here: override the ones wanted."""

    def say(self, text: str) -> None:
        """A line for the user: sent, synced, uploading with..."""

    def agent_failed(self, label: str, error: Exception) -> None:
        """This agent's part failed; the others go on."""

    def output(self, label: str, many: bool) -> Output:
        """The uploader output of one agent (``many``: several agents run at once)."""
        return _Nowhere()

    def bar(self, text: str) -> Bar:
        return _Nowhere()

    @contextmanager
    def farm(self, label: str, boards: list[farm.Board]) -> Iterator[None]:
        """Around flashing every board of a port glob on one agent."""
        yield

    def board_output(self, label: str, board: farm.Board) -> Output:
        return _Nowhere()

    def board_flashing(self, board: farm.Board) -> None:
        pass

    def board_flashed(self, label: str, result: farm.BoardUpload) -> None:
        pass

    def farm_done(self, label: str, results: list[farm.BoardUpload]) -> None:
        """Every board of one agent's port glob, in port order."""


async def run(plan: RunPlan, agents_wanted: list[str], events: RunEvents) -> int:
    """The plan on every agent (all online ones if ``agents_wanted`` is empty), one task
    each; returns the first non-zero uploader exit code, else 0."""
    codes: dict[str, int] = {}
    paths = [p for up in plan.uploads for p in [*up.files, *([up.ini] if up.ini else [])]]
    # Hashing overlaps connecting to the relay and the agent handshakes.
    async with (
        flash.Hashes(paths) as hashes,
        Client.connect(agents=agents_wanted) as client,
    ):
        agents = await resolve_targets(client, agents_wanted)
        if not agents:
            raise RemoteError("no agents online: start one with 'pio-remote agent start'")
        many = len(agents) > 1

        async def one(ref: str) -> None:
            label = display_name(client, ref)
            out = events.output(label, many)
            try:
                async with client.session(ref) as agent:
                    if plan.project_dir is not None:
                        codes[ref] = await _remote_build(agent, plan, events, out, label)
                    else:
                        codes[ref] = await _stage_and_flash(agent, plan, hashes, events, out, label)
            except (RemoteError, ChannelClosed, RelayError) as exc:
                if client.link.error is not None:
                    raise client.link.error from None  # the relay is gone, not this agent
                events.agent_failed(label, exc)
                codes[ref] = 1
            finally:
                out.close()

        async with trio.open_nursery() as nursery:
            for ref in agents:
                nursery.start_soon(one, ref)
    return next((c for c in codes.values() if c != 0), 0)


async def _stage_and_flash(
    agent: AgentSession,
    plan: RunPlan,
    hashes: flash.Hashes,
    events: RunEvents,
    out: Output,
    label: str,
) -> int:
    for up in plan.uploads:
        firmware = await hashes.get(up.files, agent)
        ini = (await hashes.get([up.ini], agent))[0] if up.ini else None
        if farm.is_glob(up.port):
            code = await _flash_farm(agent, plan, events, up, firmware, ini, label)
            if code != 0:
                return code
            continue
        bar = events.bar(f"{label}: sending")
        try:
            staged, result = await flash.deploy(
                agent,
                firmware,
                ini,
                output=out,
                progress=bar.start,
                port=up.port,
                env=up.env,
                targets=plan.targets,
                verbose=plan.verbose,
                silent=plan.silent,
                on_event=_event_lines(plan, events, label, bar),
            )
        finally:
            bar.stop()
        events.say(
            f"Agent {label}: sent {transfer.human_size(staged.sent_bytes)} "
            f"({staged.sent_files} file(s)), {staged.cached_files} file(s) already there"
        )
        if result.exit_code != 0:
            events.say(f"Agent {label}: uploader exited with {result.exit_code}")
            return result.exit_code
    return 0


async def _flash_farm(
    agent: AgentSession,
    plan: RunPlan,
    events: RunEvents,
    up: EnvUpload,
    firmware: list[tuple[Path, transfer.FileEntry]],
    ini: tuple[Path, transfer.FileEntry] | None,
    label: str,
) -> int:
    """--upload-port GLOB: every matching board at once, one result per board."""
    boards = await farm.find_boards(agent, label, up.port)
    if not boards:
        raise RemoteError(f"no port matching '{up.port}' on agent {label}: see 'device list'")
    with events.farm(label, boards):
        results = await farm.flash_boards(
            agent, boards, firmware, ini, functools.partial(events.board_output, label),
            events.board_flashing, functools.partial(events.board_flashed, label),
            env=up.env, targets=plan.targets, verbose=plan.verbose, silent=plan.silent,
        )  # fmt: skip
    events.farm_done(label, results)
    return next((r.exit_code for r in results if r.exit_code != 0), 0)


async def _remote_build(
    agent: AgentSession, plan: RunPlan, events: RunEvents, out: Output, label: str
) -> int:
    assert plan.project_dir is not None

    def show(delta: transfer.Delta) -> None:
        events.say(
            f"Agent {label}: syncing {len(delta.changed)} changed file(s) "
            f"({transfer.human_size(delta.bytes_changed)}), removing {len(delta.removed)}"
        )

    bar = events.bar(f"{label}: syncing")
    try:
        synced = await flash.sync_project(agent, plan.project_dir, bar.start(None), show)
    finally:
        bar.stop()
    events.say(
        f"Agent {label}: project synced ({synced.updated} updated, {synced.removed} "
        f"removed, {synced.unchanged} unchanged; sent "
        f"{transfer.human_size(synced.sent_bytes)})"
    )
    for env in plan.envs:
        result = await flash.flash(
            agent,
            output=out,
            env=env,
            project=synced.project,
            targets=plan.targets,
            port=plan.ports.get(env, ""),
            verbose=plan.verbose,
            silent=plan.silent,
            on_event=_event_lines(plan, events, label),
        )
        if result.exit_code != 0:
            return result.exit_code
    return 0


def _event_lines(
    plan: RunPlan, events: RunEvents, label: str, bar: Bar | None = None
) -> Callable[[dict[str, Any]], None]:
    def show(event: dict[str, Any]) -> None:
        if bar is not None:
            bar.stop()  # the uploader's output follows: no bar in its way
        if "uploader" in event:
            events.say(f"Agent {label}: uploading with {event['uploader']}")
            if plan.verbose:
                events.say(f"Agent {label}: $ {' '.join(event.get('argv', []))}")
        elif "building" in event:
            events.say(f"Agent {label}: building environment {event['building']}")

    return show
