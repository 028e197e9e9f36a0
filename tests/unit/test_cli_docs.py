"""docs/cli.md's reference is the CLI's own --help, and shell completion works."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from clitree import leaf_commands

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_cli_md_matches_every_help_text():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cli-docs"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


@pytest.mark.parametrize("command", [["device", "list"], ["relay", "serve"], []])
def test_reference_blocks_are_what_the_cli_prints(command):
    """The script renders what `pio-remote ... --help` prints in any terminal >= 80 columns."""
    shown = subprocess.run(
        [sys.executable, "-m", "pio_remote", *command, "--help"],
        env={**os.environ, "COLUMNS": "100"},
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.rstrip()
    path = " ".join(["pio-remote", *command])
    doc = (ROOT / "docs" / "cli.md").read_text()
    block = re.search(rf"#+ `{re.escape(path)}`\n\n```text\n(.*?)\n```", doc, re.DOTALL)
    assert block, f"no reference block for {path}"
    assert block.group(1) == shown


def _complete(shell: str, words: str, cword: int | None = None) -> str:
    env = {
        **os.environ,
        "_PIO_REMOTE_COMPLETE": f"{shell}_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - 1 if cword is None else cword),
    }
    return subprocess.run(
        [str(BIN / "pio-remote")], env=env, capture_output=True, text=True, timeout=60
    ).stdout


def test_commands_and_options_complete():
    assert "plain,device" in _complete("bash", "pio-remote dev").splitlines()
    assert "plain,--json-output" in _complete("bash", "pio-remote device list --js").splitlines()
    serve = _complete("bash", "pio-remote relay serve --log-level ", 4).splitlines()
    assert {"plain,debug", "plain,info"} <= set(serve)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_each_shell_gets_a_completion_script(shell):
    script = subprocess.run(
        [str(BIN / "pio-remote")],
        env={**os.environ, "_PIO_REMOTE_COMPLETE": f"{shell}_source"},
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "_PIO_REMOTE_COMPLETE" in script and f"{shell}_complete" in script


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash missing")
def test_bash_completes_through_the_documented_line():
    """What docs/cli.md tells bash users to add, then a Tab after `pio-remote agent l`."""
    doc = (ROOT / "docs" / "cli.md").read_text()
    (line,) = [ln for ln in doc.splitlines() if "bash_source" in ln and ln.startswith("eval")]
    script = f"""{line}
COMP_WORDS=(pio-remote agent l); COMP_CWORD=2
_pio_remote_completion pio-remote
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    result = subprocess.run(
        ["bash", "-c", script],
        env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.split() == ["list"], result.stderr


def test_every_option_of_every_command_says_what_it_does():
    import click

    from pio_remote.cli import cli

    missing = {
        " ".join(path): [
            p.opts[-1] for p in command.params if isinstance(p, click.Option) and not p.help
        ]
        for path, command in leaf_commands(cli)
    }
    assert {path: names for path, names in missing.items() if names} == {}


def _help(*command: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "pio_remote", *command, "--help"],
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout


def test_help_names_defaults_the_lease_variable_and_the_agent_settings():
    test_help = _help("test")
    assert "[default: 120.0" in test_help  # --timeout
    assert "$PIO_REMOTE_LEASE" in test_help
    assert "test/<suite>/" in test_help  # --without-building needs the suite's folder
    assert "docs/agent-config.md" in _help("agent", "start")
    assert "The port whose lease to release" in _help("device", "unlock")
