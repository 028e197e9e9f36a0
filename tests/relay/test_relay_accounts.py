"""The account database is read off the event loop: a locked db stalls no one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio
from relay_testkit import ConnectError, agent, client, open_channel, relay_cli, wire

from pio_remote.relay.accounts import DB_NAME, Accounts
from pio_remote.wire.envelope import FrameType

LOCK_S = 3.0
# A round trip between connected peers; the old relay stalled 2 s (SQLite's busy
# timeout) in its event loop on each revocation check during a lock.
ROUND_TRIP_DEADLINE_S = 1.5

LOCKER = f"""
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep({LOCK_S})
db.execute("ROLLBACK")
print("unlocked", flush=True)
"""


async def test_a_locked_database_stalls_no_frame_and_hangs_no_connection(
    start_relay, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with Accounts(data) as accounts:
        token = accounts.add("alice")
    relay = start_relay(data)
    # A token issued a moment ago works at once (the table is re-read on a miss).
    added = relay_cli("user", "add", "erin", data_dir=data)
    async with client(relay.url, added.stdout.strip()):
        pass
    async with agent(relay.url, token, "lab") as agt, client(relay.url, token) as cli:
        aid, _ = await open_channel(cli, agt, 1, "lab")
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(data / DB_NAME)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert locker.stdout is not None
            assert await trio.to_thread.run_sync(locker.stdout.readline) == "locked\n"
            unlocked = trio.Event()

            async def wait_unlocked() -> None:
                line = await trio.to_thread.run_sync(locker.stdout.readline)  # type: ignore[union-attr]
                assert line == "unlocked\n"
                unlocked.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_unlocked)
                # A known token connects while the db is locked.
                with trio.fail_after(2):
                    async with client(relay.url, token) as late:
                        await late.send(FrameType.PING, 0, b"in")
                        assert (await late.expect(FrameType.PONG)).payload == b"in"
                # An unknown one gets a clear answer within the busy timeout, no hang.
                with trio.fail_after(5), pytest.raises(ConnectError) as no:
                    async with wire(relay.url, "x" * 43, "client"):
                        pass
                assert no.value.status in (401, 503)
                if no.value.status == 503:
                    assert "cannot read its account database" in str(no.value)
                rounds = 0
                while not unlocked.is_set():  # frames keep flowing for the whole lock
                    with trio.fail_after(ROUND_TRIP_DEADLINE_S):
                        await cli.send(FrameType.DATA, 1, rounds.to_bytes(4, "big"))
                        got = await agt.expect(FrameType.DATA)
                        assert (got.channel, got.payload) == (aid, rounds.to_bytes(4, "big"))
                        await agt.send(FrameType.DATA, aid, b"back")
                        assert (await cli.expect(FrameType.DATA)).payload == b"back"
                    rounds += 1
                assert rounds > 10
        finally:
            locker.kill()
            locker.wait()
        # And after the lock, a revocation still lands within about a second.
        regenerated = relay_cli("token", "alice", "--regenerate", data_dir=data)
        assert regenerated.returncode == 0, regenerated.stderr
        with trio.fail_after(3):
            await cli.expect_error("token_revoked")
