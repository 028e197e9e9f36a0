"""`pio-remote [-a AGENT]... run`: PlatformIO's `pio remote run`, end to end encrypted.

Builds locally with PlatformIO Core when it is installed (else uses what is
already in `.pio/build/<env>/`), sends the artifacts to each agent, and runs
the agent's uploader there; `-r` syncs the project and builds on the agent
instead. The exit code is the uploader's (the first non-zero one over agents).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import trio

from pio_remote.cli.common import EXIT_USAGE, Options, clean, console, fail, run
from pio_remote.cli.device_cmds import display_name, resolve_targets
from pio_remote.cli.farm_progress import FarmProgress, live_view, stop_on_signals
from pio_remote.client import farm
from pio_remote.client import upload as flash
from pio_remote.client.api import AgentSession, Client, RemoteError
from pio_remote.client.project import BOARD_TARGETS, INI, ProjectConfig, find_artifacts
from pio_remote.net.channel import ChannelClosed
from pio_remote.net.link import RelayError
from pio_remote.wire import transfer

if TYPE_CHECKING:
    from rich.progress import Progress


@dataclass
class EnvUpload:
    """One environment's files to flash (``env`` None for bare --firmware files)."""

    env: str | None
    source: str
    files: list[Path]
    ini: Path | None
    port: str


@dataclass
class Plan:
    """What to do on every agent: flash ``uploads``, or sync and build ``project_dir``."""

    targets: list[str]
    say: Callable[[str], None]
    verbose: bool
    silent: bool
    uploads: list[EnvUpload] = field(default_factory=list)
    hashes: flash.Hashes | None = None
    project_dir: Path | None = None
    envs: list[str] = field(default_factory=list)
    ports: dict[str, str] = field(default_factory=dict)  # env -> --upload-port or upload_port
    progress: FarmProgress = field(default_factory=FarmProgress)  # boards of a port glob


@click.command("run")
@click.option(
    "-e",
    "--environment",
    "environments",
    multiple=True,
    metavar="ENV",
    help="Environment from platformio.ini (repeatable)",
)
@click.option(
    "-t",
    "--target",
    "targets",
    multiple=True,
    metavar="TARGET",
    help="Target, e.g. upload (repeatable); without one, only build",
)
@click.option(
    "--upload-port",
    default="",
    help="Port on the agent, an IP/mDNS name (OTA), or a glob: every matching board at once",
)
@click.option(
    "-d",
    "--project-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="The PlatformIO project",
)
@click.option("-s", "--silent", is_flag=True, help="Print only errors and uploader output")
@click.option("-v", "--verbose", is_flag=True, help="Say what runs where")
@click.option("--disable-auto-clean", is_flag=True, help="Passed to the local PlatformIO build")
@click.option(
    "-r",
    "--force-remote",
    is_flag=True,
    help="Sync the project to the agent and build there (needs PlatformIO on it)",
)
@click.option(
    "--firmware",
    "firmware",
    multiple=True,
    metavar="FILE",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Upload this file instead of a PlatformIO build (repeatable; the first "
    "one is $SOURCE); needs no platformio.ini",
)
@click.pass_obj
def run_cmd(
    opts: Options,
    environments: tuple[str, ...],
    targets: tuple[str, ...],
    upload_port: str,
    project_dir: Path,
    silent: bool,
    verbose: bool,
    disable_auto_clean: bool,
    force_remote: bool,
    firmware: tuple[Path, ...],
) -> None:
    """Build, send the firmware to the agents and upload it there."""
    board = [t for t in targets if t in BOARD_TARGETS]
    plan = Plan(board, _sayer(silent), verbose, silent)
    if firmware:
        if not board or len(board) != len(targets):
            others = [t for t in targets if t not in BOARD_TARGETS]
            raise click.UsageError(
                "--firmware uploads the given files and builds nothing: it needs -t upload"
                + (f", and cannot run {', '.join(others)}" if others else "")
            )
        names = [p.name for p in firmware]
        if len(set(names)) != len(names):
            raise click.ClickException(f"--firmware files need distinct names, got {names}")
        plan.uploads = [EnvUpload(None, names[0], list(firmware), None, upload_port)]
        sys.exit(run(_remote, opts, plan))
    # A broken platformio.ini (ProjectError) exits 2 with one line: common.ERRORS.
    config = ProjectConfig.load(project_dir)
    plan.envs = config.select_envs(list(environments))
    plan.ports = {
        env: upload_port or (config.get(env, "upload_port") or "").strip() for env in plan.envs
    }
    if force_remote:
        plan.project_dir = project_dir
        sys.exit(run(_remote, opts, plan))
    _local_build(
        project_dir,
        plan.envs,
        [t for t in targets if t not in BOARD_TARGETS],
        silent,
        verbose,
        disable_auto_clean,
        plan.say,
    )
    if not board:
        plan.say("No upload target: nothing sent to the agents (add -t upload)")
        return
    with tempfile.TemporaryDirectory(prefix="pio-remote-") as tmp:
        ini = flash.resolved_ini(project_dir / INI, Path(tmp))  # ${sysenv.X}: ours
        for env in plan.envs:
            art = find_artifacts(config, env)
            plan.uploads.append(EnvUpload(env, art.source.name, art.files, ini, plan.ports[env]))
        code = run(_remote, opts, plan)
    sys.exit(code)


def _sayer(silent: bool) -> Callable[[str], None]:
    def say(text: str) -> None:
        if not silent:  # agent names, uploaders and argv come from the agent: cleaned
            click.echo(clean(text), err=True)

    return say


def _local_build(
    project_dir: Path,
    envs: list[str],
    targets: list[str],
    silent: bool,
    verbose: bool,
    disable_auto_clean: bool,
    say: Callable[[str], None],
) -> None:
    """Build with the local PlatformIO Core if there is one; else use existing artifacts."""
    pio = shutil.which("pio") or shutil.which("platformio")
    if pio is None and targets:
        fail(
            f"PlatformIO Core is not installed here, so target(s) {', '.join(targets)} cannot "
            "run: install it (pip install platformio), or use -r to run them on the agent",
            EXIT_USAGE,
        )
    if pio is None:
        say(
            f"PlatformIO Core is not installed here: using the artifacts in {project_dir}"
            "/.pio/build/<env>/"
        )
        return
    argv = [pio, "run", "-d", str(project_dir)]
    for env in envs:
        argv += ["-e", env]
    for target in targets:
        argv += ["-t", target]
    argv += ["-s"] if silent else []
    argv += ["-v"] if verbose else []
    argv += ["--disable-auto-clean"] if disable_auto_clean else []
    code = subprocess.call(argv)
    if code != 0:
        click.echo(f"Error: the local build failed ('{' '.join(argv)}' exited {code})", err=True)
        sys.exit(code)


async def _remote(opts: Options, plan: Plan) -> int:
    """The uploads; SIGINT/SIGTERM stop them and say which boards had finished."""
    async with stop_on_signals() as stop:
        code = await _remote_all(opts, plan)
    if not stop.stopped:
        return code
    for state in plan.progress.boards.values():
        outcome = state.phase if state.done else f"not finished ({stop.reason})"
        click.echo(clean(f"{state.name}: {outcome}"))
    unfinished = plan.progress.unfinished()
    tail = f": {len(unfinished)} board(s) not finished" if unfinished else ""
    click.echo(f"Stopped: {stop.reason}{tail}", err=True)
    return stop.exit_code


async def _remote_all(opts: Options, plan: Plan) -> int:
    """One task per agent, each with its own errors; returns the exit code for the shell."""
    codes: dict[str, int] = {}
    paths = [p for up in plan.uploads for p in [*up.files, *([up.ini] if up.ini else [])]]
    # Hashing overlaps connecting to the relay and the agent handshakes.
    async with (
        flash.Hashes(paths) as plan.hashes,
        Client.connect(agents=opts.agents) as client,
    ):
        agents = await resolve_targets(client, opts.agents)
        if not agents:
            raise RemoteError("no agents online: start one with 'pio-remote agent start'")
        many = len(agents) > 1

        async def one(ref: str) -> None:
            label = display_name(client, ref)
            out = _Writer(f"[{label}] " if many else "")
            try:
                async with client.session(ref) as agent:
                    if plan.project_dir is not None:
                        codes[ref] = await _remote_build(agent, plan, out, label)
                    else:
                        codes[ref] = await _stage_and_flash(agent, plan, out, label)
            except (RemoteError, ChannelClosed, RelayError) as exc:
                if client.link.error is not None:
                    raise client.link.error from None  # the relay is gone, not this agent
                click.echo(f"Error: agent {clean(label)}: {clean(exc)}", err=True)
                codes[ref] = 1
            finally:
                out.close()

        async with trio.open_nursery() as nursery:
            for ref in agents:
                nursery.start_soon(one, ref)
    return next((c for c in codes.values() if c != 0), 0)


class _Writer:
    """Uploader output as it comes; with several agents, each line says whose it is.

    ``sink`` takes whole lines instead of stdout (above a live view)."""

    def __init__(self, prefix: str, sink: Callable[[str], None] | None = None):
        self.prefix = prefix.encode()
        self.out = sys.stdout.buffer if sink is None else _LineSink(sink)
        self.pending = bytearray()

    def __call__(self, data: bytes) -> None:
        if not self.prefix:
            self.out.write(data)
        else:
            self.pending.extend(data)
            *lines, rest = self.pending.split(b"\n")
            for line in lines:
                self.out.write(self.prefix + line + b"\n")
            self.pending[:] = rest
        self.out.flush()

    def close(self) -> None:
        if self.pending:
            self.out.write(self.prefix + bytes(self.pending) + b"\n")
            self.pending.clear()
            self.out.flush()


class _LineSink:
    """Looks enough like stdout's buffer to a ``_Writer``: each line goes to ``sink``."""

    def __init__(self, sink: Callable[[str], None]):
        self.sink = sink

    def write(self, data: bytes) -> None:
        self.sink(data.decode(errors="replace").rstrip("\n"))

    def flush(self) -> None:
        pass


async def _stage_and_flash(
    agent: AgentSession, plan: Plan, out: Callable[[bytes], None], label: str
) -> int:
    assert plan.hashes is not None
    for up in plan.uploads:
        firmware = await plan.hashes.get(up.files, agent)
        ini = (await plan.hashes.get([up.ini], agent))[0] if up.ini else None
        if farm.is_glob(up.port):
            code = await _flash_farm(agent, plan, up, firmware, ini, label)
            if code != 0:
                return code
            continue
        bar = _Bar(f"{label}: sending", plan.silent)
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
                on_event=_event_printer(plan, label, bar),
            )
        finally:
            bar.stop()
        plan.say(
            f"Agent {label}: sent {transfer.human_size(staged.sent_bytes)} "
            f"({staged.sent_files} file(s)), {staged.cached_files} file(s) already there"
        )
        if result.exit_code != 0:
            plan.say(f"Agent {label}: uploader exited with {result.exit_code}")
            return result.exit_code
    return 0


async def _flash_farm(
    agent: AgentSession,
    plan: Plan,
    up: EnvUpload,
    firmware: list[tuple[Path, transfer.FileEntry]],
    ini: tuple[Path, transfer.FileEntry] | None,
    label: str,
) -> int:
    """--upload-port GLOB: every matching board at once, one result line per board.

    While they flash: a live line per board on a terminal, else a line on stderr
    as each one ends; at the end, the result lines on stdout in port order."""
    boards = await farm.find_boards(agent, label, up.port)
    if not boards:
        raise RemoteError(f"no port matching '{up.port}' on agent {label}: see 'device list'")
    writers: list[_Writer] = []
    for board in boards:
        plan.progress.board(board)

    def outcome(r: farm.BoardUpload) -> str:
        text = "uploaded" if r.exit_code == 0 else f"FAILED (exit {r.exit_code})"
        return text + (f": {r.error}" if r.error else "")

    with live_view(plan.progress, not plan.silent) as above:

        def output(board: farm.Board) -> Callable[[bytes], None]:
            writers.append(_Writer(f"[{label}:{board.port}] ", above))
            return writers[-1]

        def ended(r: farm.BoardUpload) -> None:
            plan.progress.flashed(r.board, outcome(r))
            if above is None:
                plan.say(f"{label}:{r.board.port}: {outcome(r)}")

        try:
            results = await farm.flash_boards(
                agent, boards, firmware, ini, output, plan.progress.flashing, ended,
                env=up.env, targets=plan.targets, verbose=plan.verbose, silent=plan.silent,
            )  # fmt: skip
        finally:
            for w in writers:
                w.close()
    for r in results:
        click.echo(clean(f"{label}:{r.board.port}: {outcome(r)}"))
    return next((r.exit_code for r in results if r.exit_code != 0), 0)


async def _remote_build(
    agent: AgentSession, plan: Plan, out: Callable[[bytes], None], label: str
) -> int:
    assert plan.project_dir is not None

    def show(delta: transfer.Delta) -> None:
        plan.say(
            f"Agent {label}: syncing {len(delta.changed)} changed file(s) "
            f"({transfer.human_size(delta.bytes_changed)}), removing {len(delta.removed)}"
        )

    bar = _Bar(f"{label}: syncing", plan.silent)
    try:
        synced = await flash.sync_project(agent, plan.project_dir, bar.start(None), show)
    finally:
        bar.stop()
    plan.say(
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
            on_event=_event_printer(plan, label),
        )
        if result.exit_code != 0:
            return result.exit_code
    return 0


def _event_printer(
    plan: Plan, label: str, bar: _Bar | None = None
) -> Callable[[dict[str, Any]], None]:
    def show(event: dict[str, Any]) -> None:
        if bar is not None:
            bar.stop()  # the uploader's output follows: no bar in its way
        if "uploader" in event:
            plan.say(f"Agent {label}: uploading with {event['uploader']}")
            if plan.verbose:
                plan.say(f"Agent {label}: $ {' '.join(event.get('argv', []))}")
        elif "building" in event:
            plan.say(f"Agent {label}: building environment {event['building']}")

    return show


class _Bar:
    """A rich progress bar on a terminal (bytes and speed); nothing otherwise."""

    def __init__(self, label: str, silent: bool):
        self.enabled = not silent and console(stderr=True).is_terminal
        self.label = label
        self.progress: Progress | None = None

    def start(self, total: int | None) -> Callable[[int], None] | None:
        if not self.enabled:
            return None
        self.stop()
        from rich.progress import Progress

        progress = Progress(*progress_columns(), console=console(stderr=True), transient=True)
        progress.start()
        task = progress.add_task(self.label, total=total)
        self.progress = progress
        return lambda n: progress.advance(task, n)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def progress_columns() -> list[Any]:
    """Label, bar, bytes done/total and speed, in KiB/MiB as the summary line says."""
    from rich.progress import BarColumn, DownloadColumn, TextColumn

    return [
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        _speed_column(),
    ]


def _speed_column() -> Any:
    """rich's TransferSpeedColumn counts in MB/s; this one in MiB/s like every other figure."""
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class SpeedColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            text = "?" if speed is None else f"{transfer.human_size(speed)}/s"
            return Text(text, style="progress.data.speed")

    return SpeedColumn()
