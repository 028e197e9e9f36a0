"""examples/pytest-hil runs as documented (docs/pytest.md): both suites on a remote board."""

from __future__ import annotations

import subprocess

import pytest
from conftest import PY, ROOT, Proc
from monitorkit import PTYDEV

pytest.importorskip("pytest_embedded_serial")
EXAMPLES = ROOT / "examples" / "pytest-hil"


@pytest.mark.parametrize(
    ("suite", "extra"),
    [("embedded", ["--embedded-services", "serial"]), ("plain", [])],
)
def test_example_suite_passes_on_a_remote_board(world, tmp_path, suite, extra):
    board = tmp_path / "dev" / "e0"
    board.parent.mkdir()
    home = world.machine("lab", "alice")
    (home.home / "agent.toml").write_text(f'port_glob = "{board.parent}/*"\n')
    dev = Proc([PY, PTYDEV, "echo", str(board)], home.env)
    world.procs.append(dev)
    dev.wait_for("ptydev")
    world.start_agent(home, "lab-pi")
    ci = world.machine("ci", "alice")
    world.pair(home, ci, "lab-pi")
    result = subprocess.run(
        [PY, "-m", "pytest", "-p", "no:cacheprovider", str(EXAMPLES / suite), *extra]
        + ["--pio-remote-agent", "lab-pi", "--pio-remote-port", str(board)],
        cwd=tmp_path,
        env=ci.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout
