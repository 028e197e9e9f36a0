"""`pio-remote quickstart`: a relay, an agent and a demo board on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from pio_remote import home

PY = [sys.executable, "-m", "pio_remote"]


def _start(args: list[str], env: dict[str, str], wait_for: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if wait_for in line:
            return proc, line.strip()
    raise click.ClickException(f"{' '.join(args)} exited before it was ready")


@click.command()
@click.option(
    "--dir",
    "base",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the demo keeps its state (default: <home>/quickstart)",
)
@click.option("--once", is_flag=True, help="Show the demo and stop, instead of running on")
def quickstart(base: Path | None, once: bool) -> None:
    """Start a relay, a user, an agent and a demo board; then show what to try."""
    base = (base or home.home_dir() / "quickstart").resolve()
    qs_home = base / "home"
    qs_home.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = {**os.environ, home.ENV_HOME: str(qs_home)}
    env.pop(home.ENV_RELAY, None)
    env.pop(home.ENV_TOKEN, None)
    procs: list[subprocess.Popen] = []
    try:
        relay, line = _start(
            [
                *PY,
                "relay",
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--data-dir",
                str(base / "relay-data"),
            ],
            env,
            "relay listening on",
        )
        procs.append(relay)
        url = line.rsplit(" ", 1)[-1]
        click.echo(f"[1/4] relay at {url}")
        subprocess.run(
            [*PY, "relay", "user", "remove", "demo", "--data-dir", str(base / "relay-data")],
            env=env,
            capture_output=True,
        )
        token = subprocess.run(
            [*PY, "relay", "user", "add", "demo", "--data-dir", str(base / "relay-data")],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        subprocess.run(
            [*PY, "account", "login", "--relay", url, "--token", token],
            env=env,
            check=True,
            capture_output=True,
        )
        click.echo("[2/4] account 'demo' created and logged in")
        board_link = base / "boards" / "demo0"
        board, _ = _start(
            [sys.executable, "-m", "pio_remote.vboard.demo_board", str(board_link)],
            env,
            "demo board",
        )
        procs.append(board)
        click.echo(f"[3/4] demo board on {board_link}")
        agent, _ = _start(
            [*PY, "agent", "start", "-n", "demo-agent", "--port-glob", str(base / "boards" / "*")],
            env,
            "online",
        )
        procs.append(agent)
        click.echo("[4/4] agent 'demo-agent' online\n")
        listing = subprocess.run([*PY, "device", "list"], env=env, capture_output=True, text=True)
        click.echo(listing.stdout + listing.stderr)
        click.echo("Try next, in another terminal:")
        click.echo(f"  export {home.ENV_HOME}={qs_home}")
        click.echo("  pio-remote agent list")
        click.echo("  pio-remote device list --json-output")
        click.echo(f"  pio-remote -a demo-agent device monitor -p {board_link} -b 115200")
        if once:
            return
        click.echo("\nRunning; press Ctrl-C to stop the relay, the agent and the board.")
        procs[0].wait()
    except KeyboardInterrupt:
        pass
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
