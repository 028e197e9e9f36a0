"""Fixtures for relay clusters: a throwaway PostgreSQL (see pgkit.py).

This directory sorts after tests/e2e and tests/relay on purpose: a conftest
imported before them would stand in for tests/conftest.py in their
``from conftest import ...`` lines.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pgkit, whatever the import mode
sys.path.insert(0, str(Path(__file__).parent.parent / "relay"))  # relay_testkit

from clusterkit import Nodes  # noqa: E402
from pgkit import PgCluster, find_pg_bin  # noqa: E402

_names = itertools.count(1)


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """One PostgreSQL server for the session; skipped if PostgreSQL is not installed."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (no initdb): apt-get install postgresql")
    try:
        cluster = PgCluster(bin_dir)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot start a PostgreSQL cluster: {exc.stderr or exc}")
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_dsn(pg: PgCluster) -> str:
    """A fresh, empty database for one test."""
    return pg.create_database(f"pio_test_{next(_names)}")


@pytest.fixture
def nodes(pg_dsn: str, tmp_path: Path) -> Iterator[Nodes]:
    cluster = Nodes(pg_dsn, tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop_all()
