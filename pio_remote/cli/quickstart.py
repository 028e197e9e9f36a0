"""`pio-remote quickstart`: a relay, an agent and a board on this machine, watched.

The board is an emulated LM3S6965 in QEMU when ``qemu-system-arm`` is installed on Linux
(so an upload really changes what it prints), else the pty demo board (macOS too).
Children are started and watched on trio (``quickstart_procs``), each in its own process
group, so Ctrl-C reaches only us and we stop them in order. One quickstart per directory
(a lock file, through ``filelock`` like the trust files).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click
import trio

from pio_remote import home
from pio_remote.cli import quickstart_procs as procs
from pio_remote.cli.common import stop_signals

if TYPE_CHECKING:
    from filelock import BaseFileLock

DEMO_ACCOUNT = "demo"
DEMO_AGENT = "demo-agent"
QEMU = "qemu-system-arm"


@dataclass
class Layout:
    """Where one quickstart keeps its state."""

    base: Path

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def relay_data(self) -> Path:
        return self.base / "relay-data"

    @property
    def boards(self) -> Path:
        return self.base / "boards"

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    @property
    def lock(self) -> Path:
        return self.base / "quickstart.lock"

    @property
    def pid_file(self) -> Path:
        return self.base / "quickstart.pid"


def _take_lock(layout: Layout) -> BaseFileLock:
    """Hold ``quickstart.lock`` for our lifetime, our pid beside it (a locked file cannot
    be read on Windows); refuse when another quickstart holds it."""
    from filelock import FileLock, Timeout

    layout.base.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = FileLock(layout.lock, mode=0o600)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            pid = layout.pid_file.read_text().strip() or "?"
        except OSError:
            pid = "?"
        raise click.ClickException(
            f"a quickstart is already running (pid {pid}) in {layout.base}: use it, stop it "
            "with Ctrl-C in its terminal, or start another with --dir DIR"
        ) from None
    layout.pid_file.write_text(f"{os.getpid()}\n")
    return lock


def invocation(argv0: str = "", cwd: Path | None = None) -> list[str]:
    """How the user ran us, as the shortest argv that works from ``cwd`` again:
    ``pio-remote`` when that is on PATH, ``.venv/bin/pio-remote`` after README command 1,
    ``python3 file.pyz`` for the single file, ``python -m pio_remote`` otherwise."""
    argv0 = argv0 or sys.argv[0]
    cwd = cwd or Path.cwd()

    def shortest(path: Path) -> str:
        path = path.absolute()
        try:
            rel = path.relative_to(cwd)
        except ValueError:
            return str(path)
        if rel.parts and rel.parts[0].startswith("."):
            return str(rel)  # .venv/bin/pio-remote
        return f"./{rel}" if len(rel.parts) == 1 else str(path)

    if argv0.endswith(".pyz") or (argv0 and Path(argv0).is_file() and ".pyz" in argv0):
        return ["python3", shortest(Path(argv0))]
    if Path(argv0).name == "pio-remote":
        on_path = shutil.which("pio-remote")
        if on_path and Path(on_path).resolve() == Path(argv0).resolve():
            return ["pio-remote"]
        return [shortest(Path(argv0))]
    python = Path(sys.executable)
    shown = shortest(python) if ".venv" in python.parts else python.name
    return [shown, "-m", "pio_remote"]


def _child_argv() -> list[str]:
    """Our own CLI, as a child process (the single file runs itself again)."""
    if sys.argv[0].endswith(".pyz"):
        return [sys.executable, sys.argv[0]]
    return [sys.executable, "-m", "pio_remote"]


def _make_account(layout: Layout) -> str:
    """A fresh token for the demo account (the lock makes sure nobody else uses it)."""
    from pio_remote.relay.accounts import AccountError, Accounts

    with Accounts(layout.relay_data) as accounts:
        try:
            accounts.remove(DEMO_ACCOUNT)
        except AccountError:
            pass
        return accounts.add(DEMO_ACCOUNT)


def _write_agent_config(layout: Layout, qemu: bool) -> None:
    """With QEMU boards, uploads go through the farm's own uploader."""
    config = layout.home / "agent.toml"
    if not qemu:
        config.unlink(missing_ok=True)
        return
    command = shlex.join([sys.executable, "-m", "pio_remote.vboard", "upload"])
    config.write_text(
        f"[[uploader]]\nports = {str(layout.boards / '*')!r}\n"
        f"command = '{command} $UPLOAD_PORT $SOURCE'\n"
    )


async def _start_all(group: procs.Group, layout: Layout, env: dict[str, str], qemu: bool) -> Path:
    """Relay, account, board and agent, each ready before the next starts; the board's port."""
    cli = _child_argv()
    relay = await group.start(
        "relay",
        [*cli, "relay", "serve", "--bind", "127.0.0.1:0", "--data-dir", str(layout.relay_data)],
        env,
        r"relay listening on (\S+)",
    )
    url = relay.ready.group(1)
    home.save_credentials(layout.home, url, _make_account(layout))
    click.echo(f"[1/3] relay at {url}, account '{DEMO_ACCOUNT}' logged in")
    if qemu:
        await group.start(
            "QEMU board",
            [sys.executable, "-m", "pio_remote.vboard", "start", "--dir", str(layout.boards)],
            env,
            r"^ready$",
        )
        port = layout.boards / "board0"
        click.echo(f"[2/3] QEMU board (LM3S6965, firmware v1) on {port}")
    else:
        port = layout.boards / "demo0"
        await group.start(
            "demo board", [sys.executable, "-m", "pio_remote.vboard.demo_board", str(port)], env,
            "demo board",
        )  # fmt: skip
        click.echo(f"[2/3] demo board on {port} ({_no_qemu_because()})")
    await group.start(
        f"agent '{DEMO_AGENT}'",
        [*cli, "agent", "start", "-n", DEMO_AGENT, "--port-glob", str(layout.boards / "*")],
        env,
        r"agent \S+ online",
    )
    click.echo(f"[3/3] agent '{DEMO_AGENT}' online\n")
    return port


def next_commands(layout: Layout, port: Path, qemu: bool, exe: list[str]) -> list[str]:
    """Lines the user can paste into another terminal, each on its own."""
    from pio_remote.vboard import FIRMWARE_V2

    prefix = shlex.join([f"{home.ENV_HOME}={layout.home}", *exe])
    target = f"{prefix} -a {DEMO_AGENT}"
    lines = [
        f"{prefix} agent list",
        f"{prefix} device list",
        f"{target} device monitor -p {shlex.quote(str(port))} -b 115200",
    ]
    if qemu:
        lines.append(
            f"{target} run -t upload --upload-port {shlex.quote(str(port))} "
            f"--firmware {shlex.quote(str(FIRMWARE_V2))}"
            "    # then monitor again: the banner says v2"
        )
    from pio_remote.cli import cli

    test = cli.get_command(click.Context(cli), "test")  # commands load lazily
    if test is not None:
        options = {opt for param in test.params for opt in param.opts}
        if qemu and {"--firmware", "--upload-port"} <= options:
            lines.append(
                f"{target} test --upload-port {shlex.quote(str(port))} "
                f"--firmware {shlex.quote(str(FIRMWARE_V2))}    # its Unity report, as a test run"
            )
        else:
            lines.append(f"{target} test --help")
    return lines


def _no_qemu_because() -> str:
    return "QEMU boards need Linux" if sys.platform != "linux" else f"{QEMU} is not installed"


def _qemu_board() -> bool:
    """QEMU boards where the board farm runs (Linux, with qemu-system-arm)."""
    return sys.platform == "linux" and shutil.which(QEMU) is not None


@click.command()
@click.option(
    "--dir",
    "base",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the demo keeps its state (default: <home>/quickstart)",
)
@click.option("--once", is_flag=True, help="Show the demo and stop, instead of running on")
def quickstart(base: Path | None, once: bool) -> None:
    """Start a relay, an agent and a board (QEMU when installed); then show what to try.

    Runs until Ctrl-C, and stops with an error if any of them dies.
    """
    if not hasattr(os, "openpty"):
        raise click.ClickException(
            "the quickstart's demo board needs a pty, which Windows lacks: run the quickstart "
            "on Linux or macOS, or start an agent next to a real board (README, 'Setting it "
            "up for real')"
        )
    layout = Layout((base or home.home_dir() / "quickstart").resolve())
    lock = _take_lock(layout)
    try:
        layout.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = {
            **os.environ,
            home.ENV_HOME: str(layout.home),
            "PIO_REMOTE_VBOARD_RUNDIR": str(layout.base / "run"),  # not in /tmp: ours alone
            "PYTHONUNBUFFERED": "1",
        }
        env.pop(home.ENV_RELAY, None)
        env.pop(home.ENV_TOKEN, None)
        qemu = _qemu_board()
        _write_agent_config(layout, qemu)
        failure = trio.run(_supervise, layout, env, qemu, once)
    finally:
        layout.pid_file.unlink(missing_ok=True)
        lock.release()
    if failure:
        raise click.ClickException(failure)


async def _supervise(layout: Layout, env: dict[str, str], qemu: bool, once: bool) -> str | None:
    """Start everything, then watch it until a stop signal (None) or a child's exit or a
    start that failed (what happened); everything started is stopped either way."""
    with trio.open_signal_receiver(*stop_signals()) as signals:
        async with trio.open_nursery() as nursery:
            group = procs.Group(nursery, layout.logs)
            nursery.start_soon(group.end_on, signals)
            try:
                with group.scope:
                    await _show_the_demo(group, layout, env, qemu)
                    if not once:
                        click.echo("\nRunning; Ctrl-C stops the agent, the board and the relay.")
                        await group.ended.wait()
            except procs.StartError as exc:
                group.failure = str(exc)
            finally:
                stopped = await group.stop()
                if stopped:
                    click.echo("\nStopped " + ", ".join(stopped) + ".")
                nursery.cancel_scope.cancel()
    return group.failure


async def _show_the_demo(
    group: procs.Group, layout: Layout, env: dict[str, str], qemu: bool
) -> None:
    port = await _start_all(group, layout, env, qemu)
    click.echo(await procs.run_quiet([*_child_argv(), "device", "list"], env))
    click.echo("\nTry next, in another terminal (each line works on its own):")
    for line in next_commands(layout, port, qemu, invocation()):
        click.echo(f"  {line}")
