"""The relay's trio shell: sockets, tasks, timeouts; the rules live in router.py.

Task tree (every task has a parent; cancelling ``serve`` ends them all)::

    serve
    ├── watch_accounts     re-reads the token table (worker thread) once a second,
    │                      or at once on a NOTIFY from another node; drops revoked tokens
    ├── cluster.run        (with --node-id) presence, heartbeat, LISTEN: cluster.py
    ├── sweep              one task: HELLO deadline, pings, idle and stall limits
    ├── police             sheds the channels of send queues stuck over their bound
    └── accept             (per listener) accept limiter, per-IP cap
        └── connection     (per TCP connection) request head into the connection's
            │              websockets ServerProtocol -> answer or upgrade; then it
            │              reads frames: HELLO, then routing
            └── writer     drains this connection's send queue

Forwarding puts the rewritten frame on the *target's* send queue and never
waits: a queue that stays over its byte bound loses its heaviest channels
(``slow_consumer``, see fairness.py), so one slow reader slows down no one
else. Every limit is in ``limits.Limits``. Close codes: 4400 malformed input
or protocol version, 4401 token revoked, 4408 HELLO/idle timeout or not
reading, 4409 agent replaced, 1001 relay shutting down, 1002 WebSocket protocol
error, 1009 frame too large.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from prometheus_client import CONTENT_TYPE_LATEST
from websockets.http11 import Request

from pio_remote import envelope
from pio_remote.wsio import FastSocketStream
from relay import http
from relay.accounts import AccountError, Accounts, AccountStore, hash_token
from relay.connection import (
    CLOSE_TIMED_OUT,
    CLOSE_TIMEOUT,
    CLOSE_TOKEN_REVOKED,
    Connection,
)
from relay.limits import ConnectionCaps, Limits, Refusal, TokenBucket
from relay.metrics import Metrics
from relay.router import AGENT, CLIENT, Router
from relay.session import Session
from relay.tokens import StoreUnavailable, TokenTable
from relay.websocket import ServerSocket

if TYPE_CHECKING:
    from relay.cluster import Cluster

log = logging.getLogger("relay")

# Polling the account db for revocations by a separate CLI process. One cheap
# PRAGMA a second keeps the promise "revoked tokens drop within ~1 s".
ACCOUNTS_POLL_INTERVAL_S = 1.0

# Time to send the 101 answer; it only stalls if the peer stops reading.
UPGRADE_TIMEOUT_S = 10.0

# accept() failing for want of descriptors or memory: pause, as trio's
# serve_listeners does, rather than spin or stop serving.
ACCEPT_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_PAUSE_S = 0.1

PATHS = {"/v1/agent": AGENT, "/v1/client": CLIENT}

# Pings the sweeper sends before it lets other tasks run: with 10,000 idle
# agents a sweep pings over a thousand, and the active sessions must not wait
# behind all of them.
PINGS_PER_PASS = 128


def revoked_message(account: str) -> str:
    return (
        f"the token for account '{account}' was revoked or the account was removed: ask "
        f"the relay admin for a new one ('pio-remote relay token {account} --regenerate')"
    )


class Relay:
    """Shared state of one running relay: accounts, router, metrics, live connections."""

    def __init__(
        self,
        accounts: AccountStore,
        *,
        tls: ssl.SSLContext | None = None,
        ping_interval: float = 15.0,
        idle_timeout: float = 45.0,
        limits: Limits = Limits(),
    ) -> None:
        self.tokens = TokenTable(accounts)
        self.tls = tls
        self.ping_interval = ping_interval
        self.idle_timeout = idle_timeout
        self.limits = limits
        self.caps = ConnectionCaps(
            limits.max_connections_per_ip, limits.max_connections_per_account
        )
        self.router = Router()
        self.metrics = Metrics()
        self.session = Session(self.router, self.metrics, limits)
        # Set by poke_accounts (a NOTIFY from another node): re-read tokens now.
        self._accounts_poked = trio.Event()

    def poke_accounts(self) -> None:
        """Make the account watcher look now instead of at its next tick."""
        self._accounts_poked.set()

    # -- background tasks --------------------------------------------------

    async def watch_accounts(self) -> None:
        """Drop connections whose token was revoked or whose account was removed."""
        seen = self.tokens.generation
        while True:
            with trio.move_on_after(ACCOUNTS_POLL_INTERVAL_S):
                await self._accounts_poked.wait()
            self._accounts_poked = trio.Event()
            try:
                await self.tokens.refresh()
            except StoreUnavailable as exc:
                log.warning("cannot read the account database (will retry): %s", exc)
                continue
            if self.tokens.generation == seen:
                continue
            seen = self.tokens.generation
            valid = self.tokens.accounts
            for conn in list(self.session.live):
                if conn.token_hash not in valid:
                    log.info("token of account %r revoked: dropping %r", conn.account, conn)
                    conn.kill("token_revoked", revoked_message(conn.account), CLOSE_TOKEN_REVOKED)

    async def sweep(self) -> None:
        """Keepalive for every connection from one task (no timer per connection).

        PING peers quiet for ``ping_interval``; close peers silent for
        ``idle_timeout`` and peers that have not taken a frame for as long.
        """
        interval = max(0.05, min(self.ping_interval, self.idle_timeout) / 4)
        ping = envelope.encode(envelope.FrameType.PING, envelope.CONTROL_CHANNEL, b"relay")
        hello_timeout = self.limits.hello_timeout
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            pinged = 0
            for conn in list(self.session.live):
                if conn.closing:
                    continue
                if not conn.online and now - conn.started > hello_timeout:
                    self.metrics.drop("hello_timeout")
                    conn.kill(
                        "hello_timeout", f"no HELLO within {hello_timeout:g} s", CLOSE_TIMED_OUT
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
                if quiet > self.idle_timeout:
                    self.metrics.drop("idle_timeout")
                    conn.kill(
                        "idle_timeout", f"no frame for {self.idle_timeout:g} s", CLOSE_TIMED_OUT
                    )
                elif quiet > self.ping_interval and conn.pinged_at < conn.last_seen:
                    conn.pinged_at = now
                    self.session.ping(conn, ping)
                    pinged += 1
                    if pinged % PINGS_PER_PASS == 0:
                        await trio.lowlevel.checkpoint()  # let busy connections run between

    # -- connections -------------------------------------------------------

    def accept_bucket(self) -> TokenBucket | None:
        """The accept limiter, shared by every listener (IPv4 and IPv6 alike)."""
        if not self.limits.accept_rate:
            return None
        return TokenBucket(self.limits.accept_rate, self.limits.accept_burst, trio.current_time())

    async def accept(
        self, listener: trio.SocketListener, nursery: trio.Nursery, bucket: TokenBucket | None
    ) -> None:
        """Accept connections at most ``accept_rate`` a second (after a burst).

        Over the rate the relay just stops accepting for a moment: new
        connections wait in the kernel's listen backlog, and nobody is refused.
        """
        while True:
            if bucket is not None and (delay := bucket.take(trio.current_time())):
                self.metrics.accept_throttled += 1
                await trio.sleep(delay)
            try:
                tcp = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_RESOURCE_ERRNOS:
                    raise
                log.error("cannot accept connections: %s (pausing)", exc.strerror)
                await trio.sleep(ACCEPT_PAUSE_S)
                continue
            nursery.start_soon(self.handle, tcp)

    async def handle(self, tcp: trio.SocketStream) -> None:
        """One TCP connection, from the first byte to close; never raises."""
        try:
            peer = tcp.socket.getpeername()
            ip, remote = peer[0], f"{peer[0]}:{peer[1]}"
        except OSError:
            ip = remote = "?"
        refusal = self.caps.admit_ip(ip)
        stream: trio.abc.Stream = tcp
        try:
            if self.tls is not None:
                stream = trio.SSLStream(tcp, self.tls, server_side=True)
            else:
                stream = FastSocketStream(tcp)
            await self._front_door(stream, remote, refusal)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("connection from %s broke: %s", remote, exc)
        except Exception:
            log.exception("unexpected error on the connection from %s", remote)
        finally:
            if refusal is None:
                self.caps.release_ip(ip)
            with trio.move_on_after(CLOSE_TIMEOUT):
                await stream.aclose()  # graceful: TLS sends close_notify
            await trio.aclose_forcefully(stream)

    async def _front_door(
        self, stream: trio.abc.Stream, remote: str, refusal: Refusal | None
    ) -> None:
        ws = ServerSocket(envelope.MAX_FRAME_SIZE)
        try:
            request, rest = await http.read_request(stream, ws)
            if refusal is not None:  # over the per-IP cap: answer, after reading the request
                await self._refuse(stream, ws, remote, refusal)
                return
            path = request.path.split("?", 1)[0]
            role = PATHS.get(path)
            if role is None:
                self.metrics.http_requests += 1
                await stream.send_all(self._plain(ws, request.method, path))
                return
            account, token_hash = await self._authenticate(request)
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
        refusal = self.caps.admit_account(account)
        if refusal is not None:
            await self._refuse(stream, ws, remote, refusal)
            return
        try:
            answer, accepted = http.upgrade(ws, request)
            with trio.move_on_after(UPGRADE_TIMEOUT_S) as upgrade:
                await stream.send_all(answer)
            if upgrade.cancelled_caught or not accepted:
                return
            if rest:
                stream = http.ReplayStream(stream, rest)
            self.metrics.connections_total += 1
            queue = self.limits.send_queue_bytes
            conn = Connection(role, account, token_hash, stream, remote, ws, queue)
            if self.tokens.accounts.get(token_hash) != account:
                # Revoked while the upgrade answer went out: the account watcher looked
                # at the live connections then, and this one was not among them yet.
                conn.kill("token_revoked", revoked_message(account), CLOSE_TOKEN_REVOKED)
                await self.session._goodbye(conn)
                return
            await self.session.run(conn)
        finally:
            self.caps.release_account(account)

    async def _refuse(
        self, stream: trio.abc.Stream, ws: ServerSocket, remote: str, refusal: Refusal
    ) -> None:
        self.metrics.drop(refusal.drop)
        log.warning("refused %s: %s", remote, refusal.message)
        await stream.send_all(http.response(ws, refusal.status, f"{refusal.message}\n"))

    async def _authenticate(self, request: Request) -> tuple[str, str]:
        token_hash = hash_token(http.bearer_token(request))
        try:
            account = await self.tokens.account_for(token_hash)
        except StoreUnavailable as exc:
            log.error("cannot read the account database: %s", exc)
            raise http.Refusal(
                503, "relay cannot read its account database right now: retry in a moment"
            ) from None
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


_DEFAULT = Limits()


async def serve(
    host: str,
    port: int,
    data_dir: Path,
    *,
    tls: ssl.SSLContext | None = None,
    ping_interval: float = 15,
    idle_timeout: float = 45,
    accept_rate: float = _DEFAULT.accept_rate,
    accept_burst: int = _DEFAULT.accept_burst,
    max_connections_per_ip: int = _DEFAULT.max_connections_per_ip,
    max_connections_per_account: int = _DEFAULT.max_connections_per_account,
    rate: float = _DEFAULT.rate,
    rate_burst: int = _DEFAULT.rate_burst,
    send_queue_bytes: int = _DEFAULT.send_queue_bytes,
    slow_consumer_grace: float = _DEFAULT.slow_consumer_grace,
    hello_timeout: float = _DEFAULT.hello_timeout,
    database: str | None = None,
    node_id: str | None = None,
    node_timeout: float = 10.0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a relay until cancelled; ``task_status.started(port)`` gives the bound port.

    The limits are explained in ``limits.py`` and docs/relay.md (one
    ``relay serve`` option each); 0 turns a rate or a cap off. With
    ``database`` (a PostgreSQL URL) accounts come from there, and with
    ``node_id`` too this relay is one node of several (docs/scaling.md).
    """
    limits = Limits(
        accept_rate=accept_rate,
        accept_burst=accept_burst,
        max_connections_per_ip=max_connections_per_ip,
        max_connections_per_account=max_connections_per_account,
        rate=rate,
        rate_burst=rate_burst,
        send_queue_bytes=send_queue_bytes,
        slow_consumer_grace=slow_consumer_grace,
        hello_timeout=hello_timeout,
    )
    store: AccountStore
    if database:  # here: a SQLite relay never loads psycopg (the "cluster" extra)
        from relay.pgstore import PgAccounts

        store = PgAccounts(database)
    else:
        store = Accounts(Path(data_dir))
    with contextlib.closing(store) as accounts:
        relay = Relay(
            accounts,
            tls=tls,
            ping_interval=ping_interval,
            idle_timeout=idle_timeout,
            limits=limits,
        )
        await relay.tokens.load()
        cluster: Cluster | None = None
        if database and node_id:
            from relay.cluster import Cluster
            from relay.pgstore import DB_ERRORS

            cluster = Cluster(database, node_id, relay.router, relay.poke_accounts, node_timeout)
            relay.session.cluster = cluster
            try:
                await cluster.start()
            except DB_ERRORS as exc:
                raise AccountError(
                    f"cannot register node {node_id!r} in the database: {exc}"
                ) from None
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.watch_accounts)
            nursery.start_soon(relay.sweep)
            nursery.start_soon(relay.session.police.run)
            if cluster is not None:
                nursery.start_soon(cluster.run)
            bucket = relay.accept_bucket()
            for listener in listeners:
                nursery.start_soon(relay.accept, listener, nursery, bucket)
            log.info("relay listening on %s:%d", host, bound)
            task_status.started(bound)
