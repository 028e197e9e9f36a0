"""pio_remote.vboard.linewatch: waiting on what a real child prints, with deadlines."""

from __future__ import annotations

import subprocess
import sys
import time

from pio_remote.vboard.linewatch import LineWatcher

CHILD = """
import sys
sys.stdout.write("a\\nbb"); sys.stdout.flush()
sys.stdin.readline()
sys.stdout.write("b\\n" + "x" * 300000 + "\\nend"); sys.stdout.flush()
sys.stdin.readline()
"""


def test_lines_split_across_writes_and_deadlines():
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        watcher = LineWatcher(proc.stdout)
        assert watcher.wait_for("^a$", 10)
        start = time.monotonic()
        assert watcher.wait_for("^bbb$", 0.2) is None  # "bb" has no newline yet
        assert time.monotonic() - start >= 0.2
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        assert watcher.wait_for("^bbb$", 10)
        assert watcher.wait_for_bytes(rb"x{1000}\nend", 10)
        assert watcher.wait_for("^end$", 0.2) is None  # still an open line
        proc.stdin.close()  # the child exits: the last line counts, and waits end at once
        assert watcher.wait_closed(10)
        assert watcher.wait_for("^end$", 0)
        start = time.monotonic()
        assert watcher.wait_for("never", 60) is None
        assert time.monotonic() - start < 5  # a closed pipe ends the wait, not the deadline
        assert watcher.lines == ["a", "bbb", "x" * 300000, "end"]
    finally:
        proc.kill()
        proc.wait()
