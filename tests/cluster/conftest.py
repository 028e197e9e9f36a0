"""Fixtures for relay clusters: a throwaway PostgreSQL (see pgkit.py)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pgkit, whatever the import mode
sys.path.insert(0, str(Path(__file__).parent.parent / "relay"))  # relay_testkit

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


USERS = ("alice", "bob", "carol")
NODE_TIMEOUT_S = 3.0


class Nodes:
    """Relay nodes sharing one database; ``tokens`` of USERS; stops what it started."""

    def __init__(self, dsn: str, tmp: Path) -> None:
        from relay_testkit import RelayProcess

        self.dsn = dsn
        self.tmp = tmp
        self.procs: dict[str, RelayProcess] = {}
        upgrade = _relay_cli("db", "upgrade", dsn=dsn)
        assert upgrade.returncode == 0, upgrade.stderr
        self.tokens = {u: _relay_cli("user", "add", u, dsn=dsn).stdout.strip() for u in USERS}

    def start(self, node_id: str, *extra: str) -> str:
        from relay_testkit import RelayProcess

        args = ["--database", self.dsn, "--node-id", node_id]
        args += ["--node-timeout", str(NODE_TIMEOUT_S), *extra]
        proc = RelayProcess(self.tmp / "unused", self.tmp / f"{node_id}.log", args)
        self.procs[node_id] = proc
        return proc.url

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop()


def _relay_cli(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args, "--database", dsn],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def nodes(pg_dsn: str, tmp_path: Path) -> Iterator[Nodes]:
    cluster = Nodes(pg_dsn, tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop_all()
