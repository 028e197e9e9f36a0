"""`pio-remote [-a AGENT]... test`: PlatformIO's `pio remote test`, on one board or a farm.

Options keep PlatformIO's names and meanings; ours are --firmware, --timeout,
--jobs, --wait and --lease. Exit codes: 0 every case on every board passed
(skipped allowed), 1 a case failed or a suite errored, 2 usage or configuration
errors (before anything was flashed), 130/143 stopped by SIGINT/SIGTERM (the
reports are written all the same). See docs/testing.md.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from pio_remote.cli.common import Options, clean, run
from pio_remote.cli.farm_progress import FarmProgress, Stop, live_view, stop_on_signals
from pio_remote.cli.test_output import LineOutput, print_report, stderr_sayer, suite_done_line
from pio_remote.client import farm, reports, testrun
from pio_remote.client.testrun import TestEvents, TestPlan
from pio_remote.project import INI, ProjectConfig, ProjectError, find_artifacts, parse_list

EXIT_USAGE = 2


class UsageProblem(click.UsageError):
    """A usage or configuration error: one line, exit 2, nothing flashed."""


@dataclass
class Shown:
    """How the command shows a run (client/testrun.py's TestPlan is what runs)."""

    verbose: bool
    json_output: bool
    json_path: Path | None
    junit_path: Path | None
    stop: Stop = field(default_factory=Stop)  # set if a signal cut the run short


@click.command("test")
@click.option(
    "-e",
    "--environment",
    "environments",
    multiple=True,
    metavar="ENV",
    help="Environment of platformio.ini (repeatable; default: default_envs, else all)",
)
@click.option("-f", "--filter", "filters", multiple=True, metavar="GLOB", help="Suites to run")
@click.option("-i", "--ignore", "ignores", multiple=True, metavar="GLOB", help="Suites to skip")
@click.option("--upload-port", default="", help="Port on the agent, or a glob (board farm)")
@click.option("--test-port", default="", help="Where the board prints its results")
@click.option(
    "-d",
    "--project-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    help="The PlatformIO project",
)
@click.option(
    "-c",
    "--project-conf",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Its platformio.ini, if not in the project",
)
@click.option("-r", "--force-remote", is_flag=True, help="Sync the project; build on the agent")
@click.option(
    "--without-building",
    is_flag=True,
    help="Run the image 'pio test' last built in .pio/build/ENV/ (firmware.bin, .hex or "
    ".elf) as ENV's one suite (choose it with -f); its test/<suite>/ folder must exist",
)
@click.option(
    "--without-uploading", is_flag=True, help="Do not flash: test what the boards run now"
)
@click.option("--without-testing", is_flag=True, help="Flash only: do not read the results")
@click.option("--no-reset", is_flag=True, help="Do not pulse DTR/RTS before reading")
@click.option("-v", "--verbose", is_flag=True, help="Print the boards' raw output")
@click.option("--json-output", is_flag=True, help="Print the JSON report instead of tables")
@click.option(
    "--json-output-path",
    type=click.Path(),
    callback=lambda ctx, param, value: _report_path(value),
    help="File or directory (a trailing / makes one)",
)
@click.option(
    "--junit-output-path",
    type=click.Path(),
    callback=lambda ctx, param, value: _report_path(value),
    help="File or directory (a trailing / makes one)",
)
@click.option("--list-tests", is_flag=True, help="List the suites and exit")
@click.option(
    "--firmware",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Run this prebuilt test image as one suite (no platformio.ini needed)",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="Seconds per board and suite; no Unity summary by then: the suite errored",
)
@click.option("--jobs", type=click.IntRange(min=1), help="Boards in flight at once (default all)")
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds to wait for a board someone else leased",
)
@click.option(
    "--lease",
    envvar="PIO_REMOTE_LEASE",
    default="",
    help="A lease id this job holds (default: $PIO_REMOTE_LEASE)",
)
@click.pass_obj
def test_cmd(opts: Options, **kw: object) -> None:
    """Run unit tests on remote boards; every matching board runs at once."""
    shown = Shown(
        bool(kw.pop("verbose")),
        bool(kw.pop("json_output")),
        kw.pop("json_output_path"),  # type: ignore[arg-type]
        kw.pop("junit_output_path"),  # type: ignore[arg-type]
    )
    plan = _plan(**kw)  # type: ignore[arg-type]
    if kw["list_tests"]:
        for suite in plan.suites:
            click.echo(f"{suite.env}:{suite.name}")
        return
    run(_run, plan, opts.agents, shown)
    _finish(plan, shown)


async def _run(plan: TestPlan, agents: list[str], shown: Shown) -> None:
    """The run with live progress; SIGINT/SIGTERM end it early, the suites in flight
    ERRORED (``shown.stop``)."""
    started = time.monotonic()
    progress = FarmProgress(len(plan.suites))
    say = stderr_sayer(shown.json_output)

    def ended(board: farm.Board, report: reports.SuiteReport, last: bool) -> None:
        progress.suite_ended(board, report, last)
        say(suite_done_line(report))

    events = TestEvents(
        say=say,
        error=lambda text: click.echo(f"Error: {clean(text)}", err=True),  # the relay's words
        board=progress.board,
        suite_started=progress.suite_started,
        test_event=progress.test_event,
        suite_ended=ended,
        output=LineOutput if shown.verbose else None,
    )
    # -v streams the boards' raw output to stdout: no live lines in its way.
    live = not shown.json_output and not shown.verbose
    async with stop_on_signals() as shown.stop:
        with live_view(progress, live):
            await testrun.run(plan, agents, events)
    if shown.stop.stopped:
        for report in progress.in_flight():
            report.duration = round(time.time() - report.timestamp, 3)
            report.fail(shown.stop.reason)  # after the cases it had already reported
            plan.report.suites.append(report)
    plan.report.duration = round(time.monotonic() - started, 3)


def _report_path(given: str | None) -> Path | None:
    """``reports/``: a directory, made if missing (else both reports would be one file)."""
    if given is None:
        return None
    if given.endswith("/"):
        try:
            Path(given).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise click.BadParameter(f"cannot make the directory {given}: {exc.strerror}") from None
    return Path(given)


def _plan(
    environments: tuple[str, ...],
    filters: tuple[str, ...],
    ignores: tuple[str, ...],
    upload_port: str,
    test_port: str,
    project_dir: Path,
    project_conf: Path | None,
    force_remote: bool,
    without_building: bool,
    without_uploading: bool,
    without_testing: bool,
    no_reset: bool,
    list_tests: bool,
    firmware: Path | None,
    timeout: float,
    jobs: int | None,
    wait: float,
    lease: str,
) -> TestPlan:
    """Everything that can be wrong with the command line or the project, before flashing."""
    if force_remote and (firmware is not None or without_building):
        raise UsageProblem(
            "-r/--force-remote builds on the agent: drop --firmware/--without-building"
        )
    if farm.is_glob(test_port):
        raise UsageProblem(
            "--test-port takes one port; on a board farm, give each board's test port as "
            "test_port in the agent's [[uploader]] entries and select boards with "
            "--upload-port GLOB"
        )
    options = farm.RunOptions(timeout, no_reset, without_uploading, without_testing, wait=wait)
    config = None
    if firmware is not None:
        env = environments[0] if environments else "firmware"
        suites = [farm.Suite(env, firmware.stem, [firmware], None, "", upload_port, test_port)]
        suites[0].project_env = False
    else:
        try:
            config = _load(project_dir, project_conf)
            suites = _project_suites(config, project_dir, list(environments), filters, ignores)
        except ProjectError as exc:
            raise UsageProblem(str(exc)) from None
        for s in suites:
            s.upload_port = upload_port or s.upload_port
            s.test_port = test_port or s.test_port
        if not list_tests:
            _check_images(config, suites, project_dir, without_building, force_remote)
    if not suites and not list_tests:
        raise UsageProblem(_no_suites(config, project_dir, without_building))
    ports = {s.upload_port for s in suites}
    return TestPlan(
        project_dir,
        config,
        suites,
        ports.pop() if len(ports) == 1 else upload_port,
        options,
        jobs or 0,
        firmware is None and not without_building and not force_remote,
        lease,
        force_remote,
        _pio(),
    )


def _no_suites(config: ProjectConfig | None, project_dir: Path, without_building: bool) -> str:
    test_dir = project_dir / "test"
    if config is not None:
        test_dir = config.workspace_option("test_dir", test_dir)
    if farm.discover_suites(test_dir):
        return f"no test suites to run in {test_dir} (check -f and -i)"
    why = (
        ": --without-building needs it too, to name the suite whose image .pio/build/<env>/ holds"
        if without_building
        else ""
    )
    return (
        f"no test suites in {test_dir}: each suite is a folder test_<name>/ there, as for "
        f"'pio test'{why} (or run one image with --firmware FILE)"
    )


def _check_images(
    config: ProjectConfig,
    suites: list[farm.Suite],
    project_dir: Path,
    without_building: bool,
    force_remote: bool,
) -> None:
    """Can each suite's image be had: a local PlatformIO, or images already built?"""
    if not without_building and not force_remote and _pio() is None:
        raise UsageProblem(
            "PlatformIO Core is not installed here, so the suites cannot be built: "
            "install it ('pip install platformio'), or pass --without-building to use "
            f"the images already in {project_dir}/.pio/build/<env>/"
        )
    if not without_building:
        return
    if len(suites) > len({s.env for s in suites}):
        raise UsageProblem(
            "--without-building runs the one image in .pio/build/<env>/ of each "
            "environment: choose one suite per environment with -f"
        )
    for s in suites:
        try:
            s.files = find_artifacts(config, s.env).files
        except ProjectError as exc:
            build = f"pio test -f {s.name} --without-uploading --without-testing -e"
            raise UsageProblem(str(exc).replace("pio run -e", build)) from None


def _load(project_dir: Path, project_conf: Path | None) -> ProjectConfig:
    if project_conf is None:
        return ProjectConfig.load(project_dir)
    try:
        return ProjectConfig.parse(project_conf.read_text(), project_conf)
    except OSError as exc:
        raise ProjectError(f"cannot read {project_conf}: {exc.strerror}") from None


def _project_suites(
    config: ProjectConfig,
    project_dir: Path,
    environments: list[str],
    filters: tuple[str, ...],
    ignores: tuple[str, ...],
) -> list[farm.Suite]:
    test_dir = config.workspace_option("test_dir", project_dir / "test")
    names = farm.discover_suites(test_dir)
    suites = []
    for env in config.select_envs(environments):
        keep = [*filters] or parse_list(config.get(env, "test_filter"))
        drop = [*ignores, *parse_list(config.get(env, "test_ignore"))]
        speed = (config.get(env, "test_speed") or "").strip()
        for name in farm.select_suites(names, keep, drop):
            suites.append(
                farm.Suite(
                    env,
                    name,
                    [],
                    project_dir / INI,
                    str(test_dir / name),
                    (config.get(env, "upload_port") or "").strip(),
                    (config.get(env, "test_port") or "").strip(),
                    int(speed) if speed.isdigit() else 0,
                )
            )
    return suites


def _pio() -> str | None:
    return shutil.which("pio") or shutil.which("platformio")


def _finish(plan: TestPlan, shown: Shown) -> None:
    """Summary and reports; also after SIGINT/SIGTERM, with what ran until then."""
    r = plan.report
    if shown.json_output:
        click.echo(json.dumps(reports.run_json(r), indent=2))
    else:
        print_report(r)
    if shown.stop.stopped:
        click.echo(interrupted_line(plan, shown.stop), err=True)
    try:
        if shown.json_path is not None:
            click.echo(f"JSON report: {reports.write_json(r, shown.json_path)}", err=True)
        if shown.junit_path is not None:
            click.echo(f"JUnit report: {reports.write_junit(r, shown.junit_path)}", err=True)
    except OSError as exc:
        click.echo(f"Error: cannot write the report: {exc}", err=True)
        sys.exit(1)
    if shown.stop.stopped:
        sys.exit(shown.stop.exit_code)
    sys.exit(0 if r.ok and r.suites else 1)


def interrupted_line(plan: TestPlan, stop: Stop) -> str:
    cut = sum(1 for s in plan.report.suites if s.error == stop.reason)
    done = len(plan.report.suites) - cut
    line = f"Stopped: {stop.reason}: {done} suite(s) finished, {cut} interrupted (ERRORED)"
    if plan.planned > done + cut:
        line += f", {plan.planned - done - cut} not started"
    return line
