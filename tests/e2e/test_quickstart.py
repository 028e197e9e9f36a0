"""README command 1: quickstart brings up relay, agent and demo board, and cleans up."""

import os
import subprocess
import sys

import psutil


def test_quickstart_once_lists_the_demo_board_and_leaves_nothing_running(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIO_REMOTE_")}
    env["PIO_REMOTE_HOME"] = str(tmp_path / "home")
    before = {p.pid for p in psutil.process_iter()}
    result = subprocess.run(
        [sys.executable, "-m", "pio_remote", "quickstart", "--once", "--dir", str(tmp_path / "qs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert "agent 'demo-agent' online" in result.stdout
    assert str(tmp_path / "qs" / "boards" / "demo0") in result.stdout
    assert "pio-remote agent list" in result.stdout
    leftovers = [
        p
        for p in psutil.process_iter(["pid", "cmdline"])
        if p.pid not in before and str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]
    assert not leftovers, [p.info["cmdline"] for p in leftovers]
