"""Report files without boards: PlatformIO's JSON keys, JUnit against Jenkins' schema."""

from __future__ import annotations

import io
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import xmlschema
from junitparser import Error, Failure, JUnitXml, Skipped
from rich.console import Console

from pio_remote.cli import test_output
from pio_remote.client import reports
from pio_remote.client.reports import CaseReport, RunReport, SuiteReport

XSD = Path(__file__).resolve().parents[1] / "data" / "jenkins-junit-4.xsd"


def sample(farm: bool = True) -> RunReport:
    ok = SuiteReport("dev", "test_math", agent="lab", port="/dev/ttyACM0", farm=farm)
    ok.cases = [
        CaseReport("test_add", "PASSED", duration=0.01, file="test/t.c", line=3, stdout="x=1"),
        CaseReport("test_skip", "SKIPPED", "not here", file="test/t.c", line=9),
        CaseReport("[red]markup[/red]", "FAILED", "Expected 1 Was 2: <&>", file="t.c", line=5),
    ]
    hung = SuiteReport("dev", "test_math", agent="lab", port="/dev/ttyACM1", farm=farm)
    hung.cases = [CaseReport("test_add", "PASSED", file="test/t.c", line=3)]
    hung.fail("no Unity summary within 3 s")
    return RunReport("/home/me/proj", [ok, hung], duration=4.5)


def test_json_has_exactly_platformios_keys_plus_the_board():
    data = reports.run_json(sample())
    assert list(data) == [
        "version",
        "project_dir",
        "duration",
        "testcase_nums",
        "error_nums",
        "failure_nums",
        "skipped_nums",
        "test_suites",
    ]
    assert (data["testcase_nums"], data["error_nums"], data["failure_nums"]) == (5, 1, 1)
    first, second = data["test_suites"]
    assert first["test_name"] == "test_math@lab:/dev/ttyACM0"
    assert (first["status"], second["status"]) == ("FAILED", "ERRORED")
    assert first["test_cases"][0]["source"] == {"file": "test/t.c", "line": 3}
    assert second["test_cases"][-1] == {
        "name": "test_math",
        "status": "ERRORED",
        "message": "no Unity summary within 3 s",
        "stdout": None,
        "duration": 0.0,
        "exception": "no Unity summary within 3 s",
        "source": None,
    }
    assert json.loads(json.dumps(data)) == data


def test_junit_validates_and_parses_with_messages_intact(tmp_path):
    path = reports.write_junit(sample(), tmp_path / "r.xml")
    tree = ET.parse(path)
    for case in tree.iter("testcase"):
        del case.attrib["file"], case.attrib["line"]  # PlatformIO's, newer than the schema
    xmlschema.XMLSchema(str(XSD)).validate(tree)
    xml = JUnitXml.fromfile(str(path))
    first, second = list(xml)
    assert first.name == "dev:test_math@lab:/dev/ttyACM0"
    assert (first.tests, first.failures, first.skipped, first.errors) == (3, 1, 1, 0)
    results = {c.name: c.result for c in first}
    assert isinstance(results["test_skip"][0], Skipped)
    assert isinstance(results["[red]markup[/red]"][0], Failure)
    assert results["[red]markup[/red]"][0].message == "Expected 1 Was 2: <&>"
    [error] = [c.result[0] for c in second if c.result]
    assert isinstance(error, Error) and error.message == "no Unity summary within 3 s"


def test_broken_report_fails_the_schema(tmp_path):
    """The validation in these tests can fail: an unknown element is refused."""
    path = reports.write_junit(sample(), tmp_path / "r.xml")
    tree = ET.parse(path)
    for case in tree.iter("testcase"):
        del case.attrib["file"], case.attrib["line"]
    ET.SubElement(next(tree.iter("testcase")), "surprise")
    assert not xmlschema.XMLSchema(str(XSD)).is_valid(tree)


def test_directory_gets_platformios_file_names(tmp_path):
    r = sample()
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(1))
    named = reports.output_path(tmp_path, r.project_dir, ".json", now=1)
    assert named.name == f"pio-test-report-proj-{stamp}.json"
    assert reports.write_junit(r, tmp_path).name.endswith("-junit.xml")
    assert reports.output_path(tmp_path / "x.xml", r.project_dir, ".xml") == tmp_path / "x.xml"


def test_exit_status_rules():
    r = sample()
    assert not r.ok
    only_skipped = SuiteReport("dev", "s", cases=[CaseReport("a", "SKIPPED")])
    passed = SuiteReport("dev", "s", cases=[CaseReport("a", "PASSED"), CaseReport("b", "SKIPPED")])
    assert RunReport(".", [only_skipped, passed]).ok
    assert only_skipped.status == "SKIPPED"
    assert SuiteReport("dev", "s").status == "PASSED"  # no cases, no error (without testing)
    single = SuiteReport("dev", "s", agent="lab", port="p")
    assert single.full_name == "dev:s"  # one board: PlatformIO's name


def test_terminal_tables_print_board_text_literally(monkeypatch):
    buf = io.StringIO()
    term = Console(file=buf, force_terminal=True, width=200, color_system=None)
    monkeypatch.setattr(test_output, "console", lambda stderr=False: term)
    test_output.print_report(sample())
    text = buf.getvalue()
    assert "lab:/dev/ttyACM0" in text and "lab:/dev/ttyACM1" in text  # one table per board
    assert "[red]markup[/red]" in text  # not taken as rich markup
    assert "2 board(s), 2 suite(s), 5 case(s): 2 passed, 1 failed, 1 skipped, 1 errored" in text


def test_plain_lines_have_no_control_codes(monkeypatch, capsys):
    r = sample()
    r.suites[0].cases[0].message = "evil\x1b[2J\x07 text\nsecond line"
    test_output.print_report(r)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert (
        "dev:test_math@lab:/dev/ttyACM0\ttest_add\tPASSED\t0.010s\tevil [2J  text | second line"
        in out
    )
