"""Relay nodes sharing one PostgreSQL database, for the cluster tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
        [sys.executable, "-m", "pio_remote.relay", *args, "--database", dsn],
        capture_output=True,
        text=True,
        timeout=30,
    )
