"""Accounts in PostgreSQL: ``relay db upgrade``, the user commands, a relay serving from it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import trio
from relay_testkit import RelayProcess, agent, client, open_channel

from pio_remote.wire.envelope import FrameType

PYTHON = sys.executable
# A revocation reaches every connection within this (NOTIFY, with a 1 s poll behind it).
REVOKE_DEADLINE_S = 1.5


def relay(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "pio_remote.relay", *args, "--database", dsn],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_db_upgrade_creates_the_schema_once(pg_dsn: str) -> None:
    first = relay("db", "upgrade", dsn=pg_dsn)
    assert first.returncode == 0, first.stderr
    assert "upgraded from version 0 to 2" in first.stderr
    again = relay("db", "upgrade", dsn=pg_dsn)
    assert again.returncode == 0, again.stderr
    assert "schema is current (version 2)" in again.stderr


def test_commands_on_a_database_without_the_schema_name_the_fix(pg_dsn: str) -> None:
    proc = relay("user", "add", "alice", dsn=pg_dsn)
    assert proc.returncode == 2
    assert "schema version 0" in proc.stderr and "relay db upgrade" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreachable_or_malformed_database_is_one_line_exit_2(tmp_path: Path) -> None:
    gone = relay("user", "list", dsn=f"postgresql:///x?host={tmp_path}&user=nobody")
    assert gone.returncode == 2, gone.stderr
    assert "cannot use the database" in gone.stderr and "Traceback" not in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1, gone.stderr
    bad = relay("db", "upgrade", dsn="postgresql://[::1")
    assert bad.returncode == 2, bad.stderr
    assert "not a PostgreSQL URL" in bad.stderr and "Traceback" not in bad.stderr


def test_user_commands_against_postgresql(pg_dsn: str) -> None:
    assert relay("db", "upgrade", dsn=pg_dsn).returncode == 0
    token = relay("user", "add", "alice", dsn=pg_dsn)
    assert token.returncode == 0 and len(token.stdout.strip()) == 43
    dup = relay("user", "add", "alice", dsn=pg_dsn)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    listed = relay("user", "list", dsn=pg_dsn)
    assert re.fullmatch(r"alice\t\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n", listed.stdout), listed.stdout
    new = relay("token", "alice", "--regenerate", dsn=pg_dsn)
    assert new.returncode == 0 and new.stdout.strip() != token.stdout.strip()
    assert relay("user", "remove", "alice", dsn=pg_dsn).returncode == 0
    missing = relay("user", "remove", "alice", dsn=pg_dsn)
    assert missing.returncode == 1 and "no user 'alice'" in missing.stderr


async def test_relay_serves_from_postgresql_and_drops_a_removed_user(
    pg_dsn: str, tmp_path: Path
) -> None:
    assert relay("db", "upgrade", dsn=pg_dsn).returncode == 0
    alice = relay("user", "add", "alice", dsn=pg_dsn).stdout.strip()
    bob = relay("user", "add", "bob", dsn=pg_dsn).stdout.strip()
    proc = RelayProcess(tmp_path / "unused", tmp_path / "relay.log", ["--database", pg_dsn])
    try:
        # A token issued while the relay runs works at once.
        carol = relay("user", "add", "carol", dsn=pg_dsn).stdout.strip()
        async with client(proc.url, carol):
            pass
        async with (
            agent(proc.url, alice, "lab") as agt,
            client(proc.url, alice) as cli,
            agent(proc.url, bob, "bench") as bob_agent,
        ):
            aid, _ = await open_channel(cli, agt, 1, "lab")
            await cli.send(FrameType.DATA, 1, b"ping")
            assert (await agt.expect(FrameType.DATA)).payload == b"ping"
            removed = await trio.to_thread.run_sync(
                lambda: relay("user", "remove", "alice", dsn=pg_dsn)
            )
            assert removed.returncode == 0
            with trio.fail_after(REVOKE_DEADLINE_S):
                assert await agt.closed() == 4401
                assert await cli.closed() == 4401
            # bob is untouched
            await bob_agent.send(FrameType.PING, 0, b"x")
            assert (await bob_agent.expect(FrameType.PONG)).payload == b"x"
    finally:
        proc.stop()


def test_node_id_needs_a_database(tmp_path: Path) -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "pio_remote.relay", "serve", "--node-id", "n1", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "--node-id needs --database" in proc.stderr and "Traceback" not in proc.stderr


async def test_a_stopped_node_takes_its_agents_off_the_list_at_once(
    pg_dsn: str, tmp_path: Path
) -> None:
    """SIGTERM: the node deletes its own row (and so its presence), without the timeout."""
    import psycopg

    assert relay("db", "upgrade", dsn=pg_dsn).returncode == 0
    alice = relay("user", "add", "alice", dsn=pg_dsn).stdout.strip()
    args = ["--database", pg_dsn, "--node-id", "n1", "--node-timeout", "600"]
    proc = RelayProcess(tmp_path / "unused", tmp_path / "relay.log", args)
    try:
        async with agent(proc.url, alice, "lab") as agt, client(proc.url, alice) as cli:
            await open_channel(cli, agt, 1, "lab")
            with psycopg.connect(pg_dsn) as conn:  # written before the node listens
                assert conn.execute("SELECT node_id FROM nodes").fetchall() == [("n1",)]
            assert proc.stop() == 0
    finally:
        proc.stop()
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM nodes").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM presence").fetchone() == (0,)


def test_a_password_in_the_url_is_never_printed() -> None:
    proc = relay("user", "list", dsn="postgresql://relay:s3cretpw@127.0.0.1:1/pio")
    assert proc.returncode == 2, proc.stderr
    assert "cannot use the database" in proc.stderr
    assert "s3cretpw" not in proc.stderr + proc.stdout
