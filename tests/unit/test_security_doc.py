"""docs/security.md's threat model names its tests: each one named must exist.

A renamed or deleted attack test would otherwise leave the table promising a check
that no longer runs.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"
# `e2e/test_x.py::test_y`, `::test_z` (same file as the last one), `relay/test_w.py`.
REF = re.compile(r"`((?:[a-z0-9]+/test_[a-z0-9_]+\.py)?)(?:::(test_[a-z0-9_]+))?`")
ROLES = (
    "the relay",
    "an anonymous peer",
    "an unpaired identity of a shared account",
    "a paired client",
    "the owner",
)


def threat_table() -> list[str]:
    text = DOC.read_text()
    section = text.split("## Threat model", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| **")]


def test_the_table_has_a_row_for_each_kind_of_peer_and_each_names_tests():
    rows = threat_table()
    assert [r.split("**")[1].split(" (")[0] for r in rows] == list(ROLES)
    for row in rows:
        assert REF.search(row.rsplit("|", 2)[-2]), row[:60]


def test_every_test_the_table_names_exists():
    named = 0
    for row in threat_table():
        current: Path | None = None
        for path, name in REF.findall(row):
            if path:
                current = ROOT / "tests" / path
                assert current.is_file(), path
            if name:
                assert current is not None, name
                assert re.search(rf"^(async )?def {name}\(", current.read_text(), re.M), (
                    f"{current.relative_to(ROOT)}::{name}"
                )
                named += 1
    assert named >= 15
