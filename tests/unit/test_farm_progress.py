"""The per-board lines and the interrupt bookkeeping of a farm run, without a farm."""

import signal

from pio_remote.cli.farm_progress import FarmProgress, Stop
from pio_remote.client.farm import Board
from pio_remote.client.reports import CaseReport, SuiteReport
from pio_remote.wire.unity import FAILED, PASSED

B0, B1 = Board("alice/lab", "lab", "/dev/b0"), Board("alice/lab", "lab", "/dev/b1")


def test_a_board_line_says_phase_suite_counts_and_elapsed():
    progress = FarmProgress(suites=2)
    progress.board(B0), progress.board(B1)
    report = SuiteReport("uno", "test_math", agent="lab", port="/dev/b0")
    progress.suite_started(B0, 2, report)
    progress.test_event(B0, report, {"phase": "upload"})
    state = progress.board(B0)
    assert (
        state.line(state.since + 1.2)
        == "lab:/dev/b0  flashing  suite 2/2 uno:test_math  0 passed, 0 failed  1s"
    )
    progress.test_event(B0, report, {"phase": "test"})
    report.cases += [CaseReport("a", PASSED), CaseReport("b", FAILED), CaseReport("c", PASSED)]
    assert "running  suite 2/2 uno:test_math  2 passed, 1 failed  7s" in state.line(state.since + 7)
    assert progress.board(B1).line(progress.board(B1).since) == "lab:/dev/b1  waiting  0s"


def test_in_flight_is_what_started_and_did_not_end():
    progress = FarmProgress(suites=1)
    r0 = SuiteReport("uno", "t", agent="lab", port="/dev/b0")
    r1 = SuiteReport("uno", "t", agent="lab", port="/dev/b1")
    progress.suite_started(B0, 1, r0)
    progress.suite_started(B1, 1, r1)
    progress.suite_ended(B0, r0, last=True)
    assert progress.in_flight() == [r1]
    state = progress.board(B0)
    assert state.done and state.phase == "PASSED"
    assert state.line(state.since + 1000) == state.line(state.since + 2000)  # its clock stopped


def test_a_remote_name_cannot_move_the_cursor():
    progress = FarmProgress()
    progress.flashing(Board("a", "lab\x1b[2J", "/dev/\x1b]0;owned\x07b0"))
    assert "\x1b" not in "".join(progress.lines())


def test_stop_names_the_signal_and_the_shell_exit_code():
    assert (Stop(signal.SIGINT).reason, Stop(signal.SIGINT).exit_code) == (
        "interrupted by SIGINT (Ctrl-C)",
        130,
    )
    assert (Stop(signal.SIGTERM).reason, Stop(signal.SIGTERM).exit_code) == (
        "interrupted by SIGTERM",
        143,
    )
    assert not Stop().stopped
