"""A token revoked in the moment between its check and the connection going live.

The relay checks the token, then answers the upgrade; the account watcher
drops the *live* connections of a revoked token. A revocation that lands while
the upgrade answer is being sent must not leave a connection that the watcher
never saw. Forced here with an in-memory stream whose send waits for the test.
"""

from __future__ import annotations

import trio
import trio.testing

from pio_remote.relay.accounts import Accounts
from pio_remote.relay.server import Relay

UPGRADE = (
    "GET /v1/agent HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    "Authorization: Bearer {token}\r\n\r\n"
)


async def test_attacker_whose_token_is_revoked_mid_upgrade_gets_no_live_connection(tmp_path):
    with Accounts(tmp_path / "data") as accounts:
        token = accounts.add("mallory")
        relay = Relay(accounts)
        await relay.tokens.load()
        theirs, ours = trio.testing.memory_stream_pair()
        answering, release = trio.Event(), trio.Event()

        pump = ours.send_stream.send_all_hook  # moves what the relay sends to our side

        async def hold_the_upgrade_answer() -> None:
            answering.set()
            await release.wait()
            await pump()

        ours.send_stream.send_all_hook = hold_the_upgrade_answer
        await theirs.send_all(UPGRADE.format(token=token).encode())
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(relay.watch_accounts)
                nursery.start_soon(
                    relay._front_door, ours, "203.0.113.9", None, "203.0.113.9", lambda: None, False
                )
                await answering.wait()  # the token was good; the 101 is on its way
                with Accounts(tmp_path / "data") as admin:  # the admin, right then
                    admin.remove("mallory")
                generation = relay.tokens.generation
                relay.poke_accounts()
                while relay.tokens.generation == generation:  # the watcher reads in a thread
                    await trio.sleep(0.01)
                await trio.testing.wait_all_tasks_blocked()  # and has dropped what it saw
                ours.send_stream.send_all_hook = pump
                release.set()
                # The connection ends with token_revoked instead of going on.
                data = b""
                while b"token_revoked" not in data:
                    data += await theirs.receive_some()
                    assert not relay.session.live, "the revoked token's connection went live"
                nursery.cancel_scope.cancel()
    assert data.startswith(b"HTTP/1.1 101")
