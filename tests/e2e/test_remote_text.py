"""Strings from agents and devices are printed literally: no markup, no escape sequences.

A real pty board is offered under a port name that holds rich markup (`[/x]`
alone crashes a markup parser, `[link=...]` would inject a hyperlink) and
terminal escapes (an OSC that retitles the terminal, a clear-screen, a C1 CSI).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import PY, Env, Proc, World

# A file name cannot hold "/", so the name spans directories ("//" becomes "/").
NAME = (
    "[bold]B[/bold] [link=https://evil.invalid]click[/link] [/x] "
    "\x1b]0;owned\x07\x1b[2J\u009b31mred\u202eevil"
)
CONTROLS = ("\x1b", "\x07", "\u009b", "\u202e")


def assert_clean(text: str) -> None:
    for char in CONTROLS:
        assert char not in text, f"{char!r} reached the terminal: {text!r}"


@pytest.fixture
def hostile(world: World, tmp_path: Path) -> tuple[Env, Path]:
    """Alice's agent 'lab-pi' offering one pty board under a hostile name."""
    dev = tmp_path / "dev"
    link = dev / NAME
    link.parent.mkdir(parents=True)
    board = Proc(
        [PY, str(Path(__file__).with_name("ptydev.py")), "echo", str(link)], Env(tmp_path).env
    )
    world.procs.append(board)
    board.wait_for("ptydev")
    lab = world.machine("lab", "alice")
    glob = str(dev.joinpath(*["*"] * len(Path(NAME).parts)))
    world.start_agent(lab, "lab-pi", "--port-glob", glob, "--log-level", "error")
    return lab, link  # the agent's own machine: no pairing needed


def test_device_list_table_prints_names_literally(hostile):
    desk, link = hostile
    result = desk.cli("device", "list")
    assert "Traceback" not in result.stderr
    assert_clean(result.stdout)
    shown = str(link)
    for char in CONTROLS:
        shown = shown.replace(char, "")
    assert shown in result.stdout  # every bracket still there: nothing was read as markup
    assert "[/x]" in result.stdout and "[link=https:/evil.invalid]click[/link]" in result.stdout


def test_device_list_json_keeps_the_exact_name(hostile):
    desk, link = hostile
    result = desk.cli("device", "list", "--json-output")
    assert_clean(result.stdout)  # JSON escapes them: \u001b
    ports = [d["port"] for d in json.loads(result.stdout)["lab-pi"]]
    assert str(link) in ports


def test_error_paths_print_remote_text_literally(hostile, tmp_path):
    desk, link = hostile
    # The refusal quotes the port name back (a glob, to the agent: it holds "[").
    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"\x01" * 64)
    result = desk.cli(
        "-a",
        "lab-pi",
        "run",
        "--firmware",
        str(fw),
        "-t",
        "upload",
        "--upload-port",
        str(link),
        check=False,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "lab-pi" in result.stderr and "[/x]" in result.stderr
    assert_clean(result.stderr + result.stdout)
    # A glob that matches nothing: the error lists the ports the agent offers.
    result = desk.cli("-a", "lab-pi", "device", "monitor", "-p", "/nowhere/*", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "[/x]" in result.stderr
    assert_clean(result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1
