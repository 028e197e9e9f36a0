"""The relay's trio shell: sockets, tasks, timeouts; the rules live in router.py.

Task tree (every task has a parent; cancelling ``serve`` ends them all)::

    serve
    ├── watch_accounts     re-reads the token table (worker thread) once a second,
    │                      or at once on a NOTIFY from another node; drops revoked tokens
    ├── cluster.run        (with --node-id) presence, heartbeat, LISTEN: cluster.py
    ├── sweep              one task: HELLO deadline, pings, idle and stall limits
    ├── police             sheds the channels of send queues stuck over their bound
    ├── keep_frozen        gc.freeze() once a second, full collections on churn (gcfreeze.py)
    ├── report_auth        one log line per interval for refused tokens
    └── accept             (per listener, frontdoor.py) per-address accept limits,
        │                  accept ceiling
        └── connection     (per TCP connection) request head into the connection's
            │              websockets ServerProtocol -> answer or upgrade; then it
            │              reads frames: HELLO, then routing
            └── writer     drains this connection's send queue

Forwarding puts the rewritten frame on the *target's* send queue and never
waits: a queue that stays over its byte bound loses its heaviest channels
(``slow_consumer``, see fairness.py), so one slow reader slows down no one
else. Every limit is in ``limits.Limits``. Close codes: 4400 malformed input
or protocol version, 4401 token revoked, 4408 HELLO/idle timeout or not
reading, 4409 agent replaced (same key) or name taken (another key), 1001
relay shutting down, 1002 WebSocket protocol error, 1009 frame too large.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from pio_remote.relay import gcfreeze
from pio_remote.relay.accounts import AccountError, Accounts, AccountStore
from pio_remote.relay.connection import CLOSE_TIMED_OUT, CLOSE_TOKEN_REVOKED, revoked_message
from pio_remote.relay.frontdoor import FrontDoor
from pio_remote.relay.limits import (
    AuthThrottle,
    ConnectionCaps,
    Limits,
    PendingHeads,
    PerIpBuckets,
    TokenBucket,
)
from pio_remote.relay.metrics import Metrics
from pio_remote.relay.router import Router
from pio_remote.relay.session import Session
from pio_remote.relay.tokens import StoreUnavailable, TokenTable
from pio_remote.wire import envelope

if TYPE_CHECKING:
    from pio_remote.relay.cluster.nodes import Cluster

log = logging.getLogger("relay")

# Polling the account db for revocations by a separate CLI process. One cheap
# PRAGMA a second keeps the promise "revoked tokens drop within ~1 s".
ACCOUNTS_POLL_INTERVAL_S = 1.0


# Refused tokens are logged as one summary line per this many seconds.
AUTH_SUMMARY_INTERVAL_S = 10.0

# Pings the sweeper sends before it lets other tasks run: with 10,000 idle
# agents a sweep pings over a thousand, and the active sessions must not wait
# behind all of them.
PINGS_PER_PASS = 128


class Relay(FrontDoor):
    """Shared state of one running relay: accounts, router, metrics, live connections.

    Accepting and admitting connections is ``FrontDoor``'s part (frontdoor.py).
    """

    def __init__(
        self,
        accounts: AccountStore,
        *,
        tls: ssl.SSLContext | None = None,
        ping_interval: float = 15.0,
        idle_timeout: float = 45.0,
        limits: Limits = Limits(),
        metrics_token: str | None = None,
        trusted_proxies: frozenset[str] = frozenset(),
    ) -> None:
        self.tokens = TokenTable(accounts)
        self.tls = tls
        self.ping_interval = ping_interval
        self.idle_timeout = idle_timeout
        self.limits = limits
        self.caps = ConnectionCaps(
            limits.max_connections_per_ip, limits.max_connections_per_account
        )
        self.accepts = PerIpBuckets(limits.accept_rate_per_ip, limits.accept_burst_per_ip)
        self.pending = PendingHeads(limits.max_pending_per_ip)
        self.auth = AuthThrottle(limits.auth_failures_per_ip, limits.auth_failure_window)
        # Bearer token that /metrics asks for on the main port (None: not served
        # there; see serve()'s metrics_token and metrics_bind).
        self.metrics_token = metrics_token
        # Reverse proxies on these addresses speak for their clients: X-Real-IP is
        # the address the per-IP limits and the logs use (docs/relay.md).
        self.trusted_proxies = trusted_proxies
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
        """The accept ceiling, shared by every listener (IPv4 and IPv6 alike)."""
        if not self.limits.accept_rate:
            return None
        return TokenBucket(self.limits.accept_rate, self.limits.accept_burst, trio.current_time())

    async def report_auth(self) -> None:
        """One log line per interval for refused tokens (never one line each), and
        forget per-IP state that has run out."""
        try:
            while True:
                await trio.sleep(AUTH_SUMMARY_INTERVAL_S)
                now = trio.current_time()
                self.accepts.prune(now)
                if line := self.auth.summary(now):
                    log.warning("%s", line)
        finally:  # stopping: what the last interval saw
            if line := self.auth.summary(trio.current_time()):
                log.warning("%s", line)


async def serve(
    host: str,
    port: int,
    data_dir: Path,
    *,
    tls: ssl.SSLContext | None = None,
    ping_interval: float = 15,
    idle_timeout: float = 45,
    limits: Limits = Limits(),
    metrics_token: str | None = None,
    metrics_bind: tuple[str, int] | None = None,
    trusted_proxies: tuple[str, ...] = (),
    database: str | None = None,
    node_id: str | None = None,
    node_timeout: float = 10.0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a relay until cancelled; ``task_status.started(port)`` gives the bound port.

    ``limits`` are explained in ``limits.py`` and docs/relay.md (one
    ``relay serve`` option each); 0 turns a rate or a cap off. With
    ``database`` (a PostgreSQL URL) accounts come from there, and with
    ``node_id`` too this relay is one node of several (docs/scaling.md).
    ``/metrics`` is served on the main port only to ``Authorization: Bearer
    <metrics_token>``, and to anyone on ``metrics_bind`` (HOST, PORT) if given.
    """
    store: AccountStore
    if database:  # here: a SQLite relay never loads psycopg (the "cluster" extra)
        from pio_remote.relay.cluster.store import PgAccounts

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
            metrics_token=metrics_token,
            trusted_proxies=frozenset(trusted_proxies),
        )
        await relay.tokens.load()
        cluster: Cluster | None = None
        if database and node_id:
            from pio_remote.relay.cluster.nodes import Cluster
            from pio_remote.relay.cluster.store import DB_ERRORS

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
        metrics_listeners = []
        if metrics_bind is not None:
            metrics_listeners = await trio.open_tcp_listeners(metrics_bind[1], host=metrics_bind[0])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.watch_accounts)
            nursery.start_soon(relay.sweep)
            nursery.start_soon(relay.report_auth)
            nursery.start_soon(relay.session.police.run)
            sess = relay.session
            nursery.start_soon(gcfreeze.keep_frozen, lambda: len(sess.live), lambda: sess.ended)
            if cluster is not None:
                nursery.start_soon(cluster.run)
            bucket = relay.accept_bucket()
            for listener in listeners:
                nursery.start_soon(relay.accept, listener, nursery, bucket)
            for listener in metrics_listeners:  # its own ceiling: scrapes never wait for peers
                nursery.start_soon(relay.accept, listener, nursery, relay.accept_bucket(), True)
            if metrics_listeners:
                mhost, mport = metrics_listeners[0].socket.getsockname()[:2]
                log.info("relay metrics on http://%s:%d/metrics", mhost, mport)
            shown = f"[{host}]" if ":" in host else host  # the same text as the ready line
            log.info("relay listening on %s://%s:%d", "wss" if tls else "ws", shown, bound)
            task_status.started(bound)
