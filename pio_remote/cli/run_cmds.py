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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pio_remote.cli.common import EXIT_USAGE, Options, clean, console, fail, run
from pio_remote.cli.farm_progress import FarmProgress, live_view, stop_on_signals
from pio_remote.cli.lines import PrefixedLines
from pio_remote.client import farm, remoterun
from pio_remote.client import upload as flash
from pio_remote.client.remoterun import EnvUpload, RunPlan
from pio_remote.project import BOARD_TARGETS, INI, ProjectConfig, find_artifacts
from pio_remote.wire import transfer

if TYPE_CHECKING:
    from rich.progress import Progress


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
    plan = RunPlan(board, verbose, silent)
    view = _View(silent)
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
        sys.exit(run(_remote, opts, plan, view))
    # A broken platformio.ini (ProjectError) exits 2 with one line: common.ERRORS.
    config = ProjectConfig.load(project_dir)
    plan.envs = config.select_envs(list(environments))
    plan.ports = {
        env: upload_port or (config.get(env, "upload_port") or "").strip() for env in plan.envs
    }
    if force_remote:
        plan.project_dir = project_dir
        sys.exit(run(_remote, opts, plan, view))
    _local_build(
        project_dir,
        plan.envs,
        [t for t in targets if t not in BOARD_TARGETS],
        silent,
        verbose,
        disable_auto_clean,
        view.say,
    )
    if not board:
        view.say("No upload target: nothing sent to the agents (add -t upload)")
        return
    with tempfile.TemporaryDirectory(prefix="pio-remote-") as tmp:
        ini = flash.resolved_ini(project_dir / INI, Path(tmp))  # ${sysenv.X}: ours
        for env in plan.envs:
            art = find_artifacts(config, env)
            plan.uploads.append(EnvUpload(env, art.source.name, art.files, ini, plan.ports[env]))
        code = run(_remote, opts, plan, view)
    sys.exit(code)


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


async def _remote(opts: Options, plan: RunPlan, view: _View) -> int:
    """The uploads; SIGINT/SIGTERM stop them and say which boards had finished."""
    async with stop_on_signals() as stop:
        code = await remoterun.run(plan, opts.agents, view)
    if not stop.stopped:
        return code
    for state in view.progress.boards.values():
        outcome = state.phase if state.done else f"not finished ({stop.reason})"
        click.echo(clean(f"{state.name}: {outcome}"))
    unfinished = view.progress.unfinished()
    tail = f": {len(unfinished)} board(s) not finished" if unfinished else ""
    click.echo(f"Stopped: {stop.reason}{tail}", err=True)
    return stop.exit_code


class _View(remoterun.RunEvents):
    """How `run` shows a remote run: lines on stderr, the uploaders' output on stdout, a
    progress bar while sending, and a live line per board of a port glob."""

    def __init__(self, silent: bool):
        self.silent = silent
        self.progress = FarmProgress()  # boards of a port glob
        self.above: dict[str, Callable[[str], None] | None] = {}  # per agent: see live_view
        self.writers: dict[str, list[PrefixedLines]] = {}

    def say(self, text: str) -> None:
        if not self.silent:  # agent names, uploaders and argv come from the agent: cleaned
            click.echo(clean(text), err=True)

    def agent_failed(self, label: str, error: Exception) -> None:
        click.echo(f"Error: agent {clean(label)}: {clean(error)}", err=True)

    def output(self, label: str, many: bool) -> PrefixedLines:
        return PrefixedLines(f"[{label}] " if many else "")

    def bar(self, text: str) -> _Bar:
        return _Bar(text, self.silent)

    @contextmanager
    def farm(self, label: str, boards: list[farm.Board]) -> Iterator[None]:
        """While they flash: a live line per board on a terminal, else a line on stderr
        as each one ends."""
        for board in boards:
            self.progress.board(board)
        with live_view(self.progress, not self.silent) as above:
            self.above[label], self.writers[label] = above, []
            try:
                yield
            finally:
                for w in self.writers.pop(label):
                    w.close()
                del self.above[label]

    def board_output(self, label: str, board: farm.Board) -> PrefixedLines:
        self.writers[label].append(PrefixedLines(f"[{label}:{board.port}] ", self.above[label]))
        return self.writers[label][-1]

    def board_flashing(self, board: farm.Board) -> None:
        self.progress.flashing(board)

    def board_flashed(self, label: str, result: farm.BoardUpload) -> None:
        self.progress.flashed(result.board, _outcome(result))
        if self.above.get(label) is None:
            self.say(f"{label}:{result.board.port}: {_outcome(result)}")

    def farm_done(self, label: str, results: list[farm.BoardUpload]) -> None:
        """The result lines on stdout, in port order."""
        for r in results:
            click.echo(clean(f"{label}:{r.board.port}: {_outcome(r)}"))


def _outcome(r: farm.BoardUpload) -> str:
    text = "uploaded" if r.exit_code == 0 else f"FAILED (exit {r.exit_code})"
    return text + (f": {r.error}" if r.error else "")


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
