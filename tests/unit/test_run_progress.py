"""`run`'s progress bar counts in the same units as its summary line (KiB/MiB)."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress

from pio_remote.cli.run_cmds import progress_columns
from pio_remote.wire import transfer

MiB = 1024 * 1024


def test_bar_and_summary_use_binary_units():
    out = io.StringIO()
    term = Console(file=out, force_terminal=True, width=120, color_system=None)
    with Progress(*progress_columns(), console=term, auto_refresh=False) as progress:
        task = progress.add_task("lab-pi: sending", total=16 * MiB)
        progress.advance(task, 3 * MiB)
        progress.refresh()
    shown = out.getvalue()
    assert "3.0/16.0 MiB" in shown, shown
    assert " MB" not in shown and "MB/s" not in shown
    assert transfer.human_size(16 * MiB) == "16.0 MiB"  # the summary line's unit
