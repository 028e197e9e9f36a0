"""Test results of a `pio-remote test` run, and PlatformIO's report files for them.

The JSON and JUnit files have PlatformIO's shapes (``pio test --json-output-path
/ --junit-output-path``), so CI parsers that read PlatformIO's reports read
ours. Which board ran a suite is added the way those parsers ignore: extra
``agent``/``port``/``test_port`` keys in JSON, a ``<properties>`` block in JUnit.
On a board farm the suite name carries the board, ``ENV:SUITE@AGENT:PORT``,
so the same suite on sixteen boards gives sixteen distinct suites.
"""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pio_remote.wire.unity import ERRORED, FAILED, PASSED, SKIPPED

STATUSES = (PASSED, FAILED, SKIPPED, ERRORED)
JSON_VERSION = "1.0"


@dataclass
class CaseReport:
    name: str
    status: str
    message: str = ""
    stdout: str = ""
    duration: float = 0.0
    file: str = ""
    line: int = 0
    exception: str | None = None


@dataclass
class SuiteReport:
    """One suite on one board."""

    env: str
    name: str
    agent: str = ""
    port: str = ""
    test_port: str = ""
    test_dir: str = ""
    timestamp: float = field(default_factory=time.time)
    duration: float = 0.0
    cases: list[CaseReport] = field(default_factory=list)
    error: str = ""  # why the suite errored (no summary, upload failed, board gone)
    errored: bool = False
    farm: bool = False  # several boards in the run: names carry the board

    @property
    def test_name(self) -> str:
        return f"{self.name}@{self.agent}:{self.port}" if self.farm else self.name

    @property
    def full_name(self) -> str:
        return f"{self.env}:{self.test_name}"

    @property
    def status(self) -> str:
        if self.errored or self.count(ERRORED):
            return ERRORED
        if self.count(FAILED):
            return FAILED
        if self.cases and self.count(SKIPPED) == len(self.cases):
            return SKIPPED
        return PASSED

    def count(self, status: str) -> int:
        return sum(1 for c in self.cases if c.status == status)

    def fail(self, error: str) -> None:
        """The suite errored: one ERRORED case carries why, so every report shows it."""
        self.errored = True
        self.error = error
        self.cases.append(CaseReport(self.name, ERRORED, error, exception=error))


@dataclass
class RunReport:
    project_dir: str
    suites: list[SuiteReport] = field(default_factory=list)
    duration: float = 0.0

    def count(self, status: str) -> int:
        return sum(s.count(status) for s in self.suites)

    @property
    def cases(self) -> int:
        return sum(len(s.cases) for s in self.suites)

    @property
    def boards(self) -> int:
        return len({(s.agent, s.port) for s in self.suites})

    @property
    def ok(self) -> bool:
        """Exit 0 only if every case on every board passed (skipped allowed)."""
        return all(s.status in (PASSED, SKIPPED) for s in self.suites)


# ---- JSON -------------------------------------------------------------------------------


def _timestamp(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%dT%H:%M:%S")


def case_json(c: CaseReport) -> dict[str, Any]:
    return {
        "name": c.name,
        "status": c.status,
        "message": c.message or None,
        "stdout": c.stdout or None,
        "duration": c.duration,
        "exception": c.exception,
        "source": {"file": c.file, "line": c.line} if c.file else None,
    }


def suite_json(s: SuiteReport) -> dict[str, Any]:
    return {
        "env_name": s.env,
        "test_name": s.test_name,
        "test_dir": s.test_dir,
        "status": s.status,
        "duration": s.duration,
        "timestamp": _timestamp(s.timestamp),
        "testcase_nums": len(s.cases),
        "error_nums": s.count(ERRORED),
        "failure_nums": s.count(FAILED),
        "skipped_nums": s.count(SKIPPED),
        "test_cases": [case_json(c) for c in s.cases],
        # Ours, after PlatformIO's keys: which board ran it.
        "agent": s.agent,
        "port": s.port,
        "test_port": s.test_port,
    }


def run_json(r: RunReport) -> dict[str, Any]:
    return {
        "version": JSON_VERSION,
        "project_dir": r.project_dir,
        "duration": r.duration,
        "testcase_nums": r.cases,
        "error_nums": r.count(ERRORED),
        "failure_nums": r.count(FAILED),
        "skipped_nums": r.count(SKIPPED),
        "test_suites": [suite_json(s) for s in r.suites],
    }


# ---- JUnit ------------------------------------------------------------------------------


def junit_xml(r: RunReport) -> bytes:
    root = ET.Element(
        "testsuites",
        name=f"PlatformIO Project {Path(r.project_dir).name}",
        tests=str(r.cases),
        errors=str(r.count(ERRORED)),
        failures=str(r.count(FAILED)),
        time=f"{r.duration:.3f}",
    )
    for s in r.suites:
        suite = ET.SubElement(
            root,
            "testsuite",
            name=s.full_name,
            tests=str(len(s.cases)),
            errors=str(s.count(ERRORED)),
            failures=str(s.count(FAILED)),
            skipped=str(s.count(SKIPPED)),
            time=f"{s.duration:.3f}",
            timestamp=_timestamp(s.timestamp),
        )
        props = ET.SubElement(suite, "properties")
        for key, value in (("agent", s.agent), ("port", s.port), ("test_port", s.test_port)):
            ET.SubElement(props, "property", name=key, value=value)
        for c in s.cases:
            case = ET.SubElement(
                suite,
                "testcase",
                name=c.name,
                time=f"{c.duration:.3f}",
                status=c.status,
                file=c.file,
                line=str(c.line),
            )
            if c.status == SKIPPED:
                ET.SubElement(case, "skipped").text = c.message or None
            elif c.status == ERRORED:
                ET.SubElement(case, "error", type="Exception", message=c.message).text = c.stdout
            elif c.status == FAILED:
                ET.SubElement(case, "failure", message=c.message).text = c.stdout
            if c.stdout and c.status == PASSED:
                ET.SubElement(case, "system-out").text = c.stdout
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


# ---- files ------------------------------------------------------------------------------


def output_path(given: Path, project_dir: str, suffix: str, now: float | None = None) -> Path:
    """A directory gets PlatformIO's file name: pio-test-report-<project>-<time><suffix>."""
    if given.is_dir():
        stamp = datetime.fromtimestamp(time.time() if now is None else now).strftime("%Y%m%d%H%M%S")
        return given / f"pio-test-report-{Path(project_dir).name}-{stamp}{suffix}"
    return given


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(r: RunReport, given: Path) -> Path:
    path = output_path(given, r.project_dir, ".json")
    write_atomic(path, (json.dumps(run_json(r), indent=2) + "\n").encode())
    return path


def write_junit(r: RunReport, given: Path) -> Path:
    path = output_path(given, r.project_dir, "-junit.xml")
    write_atomic(path, junit_xml(r))
    return path
