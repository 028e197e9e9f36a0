"""The relay's trio shell: sockets, tasks, timeouts; the rules live in router.py.

Task tree (every task has a parent; cancelling ``serve`` ends them all)::

    serve
    ├── watch_accounts     polls the db once a second, drops revoked tokens
    ├── sweep              one task: HELLO deadline, pings, idle and stall limits
    └── serve_listeners
        └── connection     (per TCP connection) request head into the connection's
            │              websockets ServerProtocol -> answer or upgrade; then it
            │              reads frames: HELLO, then routing
            └── writer     drains this connection's bounded send queue

Forwarding puts the rewritten frame on the *target's* send queue and waits for
room when it is full, so a slow reader slows down whoever sends to it, and no
queue grows without bound. Close codes: 4400 malformed input or protocol
version, 4401 token revoked, 4408 HELLO/idle timeout, 4409 agent replaced,
1001 relay shutting down, 1002 WebSocket protocol error, 1009 frame too large.
"""

from __future__ import annotations

import logging
import sqlite3
import ssl
from pathlib import Path

import trio
from prometheus_client import CONTENT_TYPE_LATEST
from websockets.http11 import Request

from pio_remote import envelope
from pio_remote.wsio import FastSocketStream
from relay import http
from relay.accounts import Accounts, hash_token
from relay.connection import (
    CLOSE_TIMED_OUT,
    CLOSE_TIMEOUT,
    CLOSE_TOKEN_REVOKED,
    HELLO_TIMEOUT_S,
    Connection,
)
from relay.metrics import Metrics
from relay.router import AGENT, CLIENT, Router
from relay.session import Session
from relay.websocket import ServerSocket

log = logging.getLogger("relay")

# Polling the account db for revocations by a separate CLI process. One cheap
# PRAGMA a second keeps the promise "revoked tokens drop within ~1 s".
ACCOUNTS_POLL_INTERVAL_S = 1.0

# Time to send the 101 answer; it only stalls if the peer stops reading.
UPGRADE_TIMEOUT_S = 10.0

PATHS = {"/v1/agent": AGENT, "/v1/client": CLIENT}


class Relay:
    """Shared state of one running relay: accounts, router, metrics, live connections."""

    def __init__(
        self,
        accounts: Accounts,
        *,
        tls: ssl.SSLContext | None = None,
        ping_interval: float = 15.0,
        idle_timeout: float = 45.0,
    ) -> None:
        self.accounts = accounts
        self.tls = tls
        self.ping_interval = ping_interval
        self.idle_timeout = idle_timeout
        self.router = Router()
        self.metrics = Metrics()
        # A peer that takes no frame for idle_timeout is closed by the sweeper
        # within one more sweep; leaving connections wait that long to notify it.
        self.session = Session(self.router, self.metrics, idle_timeout + CLOSE_TIMEOUT + 1)

    # -- background tasks --------------------------------------------------

    async def watch_accounts(self) -> None:
        """Drop connections whose token was revoked or whose account was removed."""
        while True:
            await trio.sleep(ACCOUNTS_POLL_INTERVAL_S)
            try:
                if not self.accounts.changed():
                    continue
                valid = self.accounts.token_hashes()
            except sqlite3.Error as exc:
                log.warning("cannot read the account database (will retry): %s", exc)
                continue
            for conn in list(self.session.live):
                if conn.token_hash not in valid:
                    log.info("token of account %r revoked: dropping %r", conn.account, conn)
                    conn.kill(
                        "token_revoked",
                        f"the token for account '{conn.account}' was revoked or the account "
                        "was removed: ask the relay admin for a new one "
                        f"('pio-remote relay token {conn.account} --regenerate')",
                        CLOSE_TOKEN_REVOKED,
                    )

    async def sweep(self) -> None:
        """Keepalive for every connection from one task (no timer per connection).

        PING peers quiet for ``ping_interval``; close peers silent for
        ``idle_timeout`` and peers that have not taken a frame for as long.
        """
        interval = max(0.05, min(self.ping_interval, self.idle_timeout) / 4)
        ping = envelope.encode(envelope.FrameType.PING, envelope.CONTROL_CHANNEL, b"relay")
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            for conn in list(self.session.live):
                if conn.closing:
                    continue
                if not conn.online and now - conn.started > HELLO_TIMEOUT_S:
                    self.metrics.drop("hello_timeout")
                    conn.kill(
                        "hello_timeout", f"no HELLO within {HELLO_TIMEOUT_S:g} s", CLOSE_TIMED_OUT
                    )
                    continue
                if conn.writing_since and now - conn.writing_since > self.idle_timeout:
                    self.metrics.drop("write_stall")
                    conn.kill(
                        "write_stall",
                        f"peer took no data for {self.idle_timeout:g} s",
                        CLOSE_TIMED_OUT,
                    )
                    continue
                quiet = now - conn.last_seen
                if quiet > self.idle_timeout and not conn.forwarding:
                    self.metrics.drop("idle_timeout")
                    conn.kill(
                        "idle_timeout", f"no frame for {self.idle_timeout:g} s", CLOSE_TIMED_OUT
                    )
                elif quiet > self.ping_interval and conn.pinged_at < conn.last_seen:
                    conn.pinged_at = now
                    try:
                        conn.outbox.send_nowait(ping)
                    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                        pass  # busy or closing: the next sweep looks again

    # -- connections -------------------------------------------------------

    async def handle(self, tcp: trio.SocketStream) -> None:
        """One TCP connection, from the first byte to close; never raises."""
        try:
            peer = tcp.socket.getpeername()
            remote = f"{peer[0]}:{peer[1]}"
        except OSError:
            remote = "?"
        stream: trio.abc.Stream = tcp
        try:
            if self.tls is not None:
                stream = trio.SSLStream(tcp, self.tls, server_side=True)
            else:
                stream = FastSocketStream(tcp)
            await self._front_door(stream, remote)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("connection from %s broke: %s", remote, exc)
        except Exception:
            log.exception("unexpected error on the connection from %s", remote)
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT):
                await stream.aclose()  # graceful: TLS sends close_notify
            await trio.aclose_forcefully(stream)

    async def _front_door(self, stream: trio.abc.Stream, remote: str) -> None:
        ws = ServerSocket(envelope.MAX_FRAME_SIZE)
        try:
            request, rest = await http.read_request(stream, ws)
            path = request.path.split("?", 1)[0]
            role = PATHS.get(path)
            if role is None:
                self.metrics.http_requests += 1
                await stream.send_all(self._plain(ws, request.method, path))
                return
            account, token_hash = self._authenticate(request)
        except http.Refusal as exc:
            if exc.status == 401:
                self.metrics.drop("auth")
                log.warning("refused a connection from %s: %s", remote, exc)
            else:
                log.debug("bad request from %s: %s", remote, exc)
            if exc.wire:
                await stream.send_all(exc.wire)
            elif exc.status is not None:
                await stream.send_all(
                    http.response(ws, exc.status, f"{exc}\n", headers=exc.headers)
                )
            return
        answer, accepted = http.upgrade(ws, request)
        with trio.move_on_after(UPGRADE_TIMEOUT_S) as upgrade:
            await stream.send_all(answer)
        if upgrade.cancelled_caught or not accepted:
            return
        if rest:
            stream = http.ReplayStream(stream, rest)
        self.metrics.connections_total += 1
        await self.session.run(Connection(role, account, token_hash, stream, remote, ws))

    def _authenticate(self, request: Request) -> tuple[str, str]:
        token_hash = hash_token(http.bearer_token(request))
        try:
            account = self.accounts.account_for(token_hash)
        except sqlite3.Error as exc:
            log.error("cannot read the account database: %s", exc)
            raise http.Refusal(503, "relay cannot read its account database") from None
        if account is None:
            raise http.Refusal(
                401,
                "bad token: not a current token on this relay (it may have been "
                "regenerated); ask the relay admin for a new one",
                (("WWW-Authenticate", 'Bearer realm="pio-remote"'),),
            )
        return account, token_hash

    def _plain(self, ws: ServerSocket, method: str, path: str) -> bytes:
        if path not in ("/healthz", "/metrics"):
            return http.response(ws, 404, f"no such path {path!r}: try /healthz\n")
        if method != "GET":
            return http.response(ws, 405, "use GET\n", headers=(("Allow", "GET"),))
        if path == "/healthz":
            return http.response(ws, 200, "ok\n")
        body = self.metrics.render(self.session.role_counts(), len(self.router.agents))
        return http.response(ws, 200, body.decode(), content_type=CONTENT_TYPE_LATEST)


async def serve(
    host: str,
    port: int,
    data_dir: Path,
    *,
    tls: ssl.SSLContext | None = None,
    ping_interval: float = 15,
    idle_timeout: float = 45,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a relay until cancelled; ``task_status.started(port)`` gives the bound port."""
    with Accounts(Path(data_dir)) as accounts:
        relay = Relay(accounts, tls=tls, ping_interval=ping_interval, idle_timeout=idle_timeout)
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.watch_accounts)
            nursery.start_soon(relay.sweep)
            await nursery.start(trio.serve_listeners, relay.handle, listeners)
            log.info("relay listening on %s:%d", host, bound)
            task_status.started(bound)
