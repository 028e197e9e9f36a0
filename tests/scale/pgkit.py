"""A throwaway PostgreSQL cluster for the tests: initdb and pg_ctl in a temp dir.

PostgreSQL refuses to run as root, so when the tests run as root (CI does)
the cluster belongs to an unprivileged user: the ``postgres`` user that
Debian's package creates, or else a dedicated ``pio-remote-pg`` system user
made with ``useradd`` (no login shell, no home). Commands run as that user
through ``runuser``. As any other user, the cluster is simply that user's.

The server listens on a Unix socket in its own directory only (no TCP port,
so nothing to collide with) and trusts local connections: it lives for one
test session and holds only test data.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin")
FALLBACK_USER = "pio-remote-pg"
START_TIMEOUT_S = 30


def find_pg_bin() -> Path | None:
    """Where initdb and pg_ctl are, or None."""
    for name in PG_BIN_DIRS:
        if (Path(name) / "initdb").is_file():
            return Path(name)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _run_as_user() -> tuple[list[str], str | None]:
    """The command prefix that runs as the cluster's owner, and that owner."""
    if os.geteuid() != 0:
        return [], None
    for user in ("postgres", FALLBACK_USER):
        try:
            pwd.getpwnam(user)
            return ["runuser", "-u", user, "--"], user
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_USER],
        check=True,
        capture_output=True,
    )
    return ["runuser", "-u", FALLBACK_USER, "--"], FALLBACK_USER


class PgCluster:
    """One PostgreSQL server in a temp dir; ``dsn(dbname)`` URLs reach it."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.prefix, owner = _run_as_user()
        self.root = Path(tempfile.mkdtemp(prefix="pio-pg-"))
        if owner is not None:
            info = pwd.getpwnam(owner)
            os.chown(self.root, info.pw_uid, info.pw_gid)
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.log = self.root / "server.log"
        self.user = owner or pwd.getpwuid(os.geteuid()).pw_name
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", self.user, "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"listen_addresses = ''\nunix_socket_directories = '{self.socket_dir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = 32MB\n"
            )
        self.start()

    def _pg(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, str(self.bin / tool), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S + 10,
        )

    def start(self) -> None:
        self._pg(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w",
            "-t", str(START_TIMEOUT_S), "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql:///{dbname}?host={self.socket_dir}&user={self.user}"

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.SubprocessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
