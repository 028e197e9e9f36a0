"""`pio-remote` starts fast because each command imports only what it needs.

Checked in a fresh interpreter through sys.modules, so that an eager import
slipped into the CLI's top level fails here, not only in `scripts/bench startup`.
"""

from __future__ import annotations

import json
import subprocess
import sys

# Never needed to parse arguments, print --version or --help of the root group.
HEAVY = (
    "rich",
    "zeroconf",
    "relay",
    "serial",
    "trio",
    "noise",
    "cryptography",
    "pio_remote.vboard",
)
# Not needed by `agent list` (the relay, the monitor, pyserial, mDNS, the board farm).
NOT_FOR_AGENT_LIST = (
    "zeroconf",
    "relay",
    "serial",
    "pio_remote.client.monitor",
    "pio_remote.vboard",
)

PROBE = """
import json, sys
{code}
print(json.dumps(sorted(sys.modules)))
"""


def modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


def test_importing_the_cli_imports_nothing_heavy():
    assert loaded(modules_after("import pio_remote.cli"), HEAVY) == []


def test_version_imports_nothing_heavy():
    code = """
import contextlib, io
sys.argv = ["pio-remote", "--version"]
from pio_remote.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main()
"""
    assert loaded(modules_after(code), HEAVY) == []


def test_agent_list_imports_only_what_it_uses():
    code = """
from pio_remote.cli import cli
import click
ctx = click.Context(cli)
agent = cli.get_command(ctx, "agent")
agent.get_command(ctx, "list")
import pio_remote.client.api
"""
    assert loaded(modules_after(code), NOT_FOR_AGENT_LIST) == []


def test_device_forward_does_not_import_the_monitors_console():
    code = """
from pio_remote.cli import cli
import click
ctx = click.Context(cli)
cli.get_command(ctx, "device").get_command(ctx, "forward")
"""
    modules = modules_after(code)
    assert "pio_remote.cli.forward_cmds" in modules
    assert loaded(modules, ("pio_remote.client.monitor.console", "termios", "tty")) == []
