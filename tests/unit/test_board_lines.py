"""Per-board result lines name the board once, even when the suite's name carries it."""

from __future__ import annotations

from pio_remote.cli.test_output import suite_done_line
from pio_remote.client.reports import SuiteReport


def test_a_farm_suite_line_names_its_board_once():
    report = SuiteReport("uno", "test_blink", agent="lab", port="/dev/ttyACM1", farm=True)
    report.duration = 2.5
    report.fail("no Unity summary within 120 s")
    line = suite_done_line(report)
    assert line.count("lab:/dev/ttyACM1") == 1, line
    assert line.startswith("uno:test_blink on lab:/dev/ttyACM1: ERRORED (1 errored) in 2.50s")
