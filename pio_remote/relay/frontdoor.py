"""The relay's front door: accepting TCP connections, per-address limits, the request
head, authentication, plain HTTP answers (/healthz, /metrics), then the upgrade.

``FrontDoor`` is a part of ``server.Relay`` (which holds the state it uses); the
rules themselves are plain values in ``limits.py``. Per connection::

    accept      per-address accept rate and pending-head cap: over them, closed
                unread, so one address never queues in front of the others
    handle      TLS, the request head within --head-timeout, X-Real-IP from a
                trusted proxy, the per-IP cap, the token throttle, the token
    session     the WebSocket connection (session.py)
"""

from __future__ import annotations

import errno
import hmac
import logging
import math
import ssl
from collections.abc import Callable

import trio
from prometheus_client import CONTENT_TYPE_LATEST
from websockets.http11 import Request

from pio_remote.net.wsio import FastSocketStream
from pio_remote.relay import http
from pio_remote.relay.accounts import hash_token
from pio_remote.relay.connection import (
    CLOSE_TIMEOUT,
    CLOSE_TOKEN_REVOKED,
    Connection,
    revoked_message,
)
from pio_remote.relay.limits import (
    AuthThrottle,
    ConnectionCaps,
    Limits,
    PendingHeads,
    PerIpBuckets,
    Refusal,
    TokenBucket,
    ip_key,
)
from pio_remote.relay.metrics import Metrics
from pio_remote.relay.router import AGENT, CLIENT, Router
from pio_remote.relay.session import Session
from pio_remote.relay.tokens import StoreUnavailable, TokenTable
from pio_remote.relay.websocket import ServerSocket
from pio_remote.wire import envelope

log = logging.getLogger("relay")

# Time to send the 101 answer; it only stalls if the peer stops reading.
UPGRADE_TIMEOUT_S = 10.0

# accept() failing for want of descriptors or memory: pause, as trio's
# serve_listeners does, rather than spin or stop serving.
ACCEPT_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_PAUSE_S = 0.1

PATHS = {"/v1/agent": AGENT, "/v1/client": CLIENT}


class FrontDoor:
    """Connections from accept() to a running session; see the module docstring."""

    tls: ssl.SSLContext | None
    limits: Limits
    caps: ConnectionCaps
    accepts: PerIpBuckets
    pending: PendingHeads
    auth: AuthThrottle
    metrics: Metrics
    metrics_token: str | None
    trusted_proxies: frozenset[str]
    tokens: TokenTable
    router: Router
    session: Session

    async def accept(
        self,
        listener: trio.SocketListener,
        nursery: trio.Nursery,
        bucket: TokenBucket | None,
        metrics_only: bool = False,
    ) -> None:
        """Accept connections; per address, refuse at once what is over its limits.

        An address over its accept rate, or with too many connections that
        have not sent a request head, has its new connection closed here,
        unread, so it never waits in the backlog in front of anyone else. What
        is admitted counts against the ceiling ``accept_rate``: over it the
        relay stops accepting for a moment (connections wait in the kernel's
        listen backlog).
        """
        while True:
            try:
                tcp = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_RESOURCE_ERRNOS:
                    raise
                log.error("cannot accept connections: %s (pausing)", exc.strerror)
                await trio.sleep(ACCEPT_PAUSE_S)
                continue
            try:
                ip = tcp.socket.getpeername()[0]
            except OSError:
                ip = "?"
            key = ip_key(ip)
            now = trio.current_time()
            if ip in self.trusted_proxies:
                key = ""  # limited per client once its X-Real-IP is read
            elif not self.accepts.admit(key, now):
                self._drop_unread(tcp, "accept_limit")
                continue
            elif not self.pending.admit(key):
                self._drop_unread(tcp, "pending_limit")
                continue
            if bucket is not None and (delay := bucket.take(now)):
                self.metrics.accept_throttled += 1
                try:
                    await trio.sleep(delay)  # this one waits too, as the backlog does
                except BaseException:
                    tcp.socket.close()
                    raise
            nursery.start_soon(self.handle, tcp, key, metrics_only)

    def _drop_unread(self, tcp: trio.SocketStream, reason: str) -> None:
        self.metrics.drop(reason)
        tcp.socket.close()

    async def handle(
        self, tcp: trio.SocketStream, key: str = "", metrics_only: bool = False
    ) -> None:
        """One TCP connection, from the first byte to close; never raises.

        ``key`` is its address as the per-IP limits count it, with one place
        in ``self.pending`` taken by ``accept`` (given back when the request
        head is in, or the connection ends); "" for a trusted proxy.
        """
        try:
            peer = tcp.socket.getpeername()
            ip, remote = peer[0], f"{peer[0]}:{peer[1]}"
        except OSError:
            ip = remote = "?"
        pending = [key] if key else []

        def head_done() -> None:
            if pending:
                self.pending.release(pending.pop())

        proxied = ip in self.trusted_proxies
        refusal = None if proxied else self.caps.admit_ip(ip)
        stream: trio.abc.Stream = tcp
        try:
            if self.tls is not None:
                stream = trio.SSLStream(tcp, self.tls, server_side=True)
            else:
                stream = FastSocketStream(tcp)
            await self._front_door(
                stream, remote, refusal, key or ip_key(ip), head_done, metrics_only, proxied
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("connection from %s broke: %s", remote, exc)
        except Exception:
            log.exception("unexpected error on the connection from %s", remote)
        finally:
            head_done()
            if refusal is None and not proxied:
                self.caps.release_ip(ip)
            with trio.move_on_after(CLOSE_TIMEOUT):
                await stream.aclose()  # graceful: TLS sends close_notify
            await trio.aclose_forcefully(stream)

    async def _front_door(
        self,
        stream: trio.abc.Stream,
        remote: str,
        refusal: Refusal | None,
        key: str,
        head_done: Callable[[], None],
        metrics_only: bool,
        proxied: bool = False,
    ) -> None:
        ws = ServerSocket(envelope.MAX_FRAME_SIZE)
        try:
            request, rest = await http.read_request(stream, ws, self.limits.head_timeout)
        except http.Refusal as exc:
            await self._answer_refusal(stream, ws, remote, exc)
            return
        finally:
            head_done()
        client_ip = http.real_ip(request) if proxied else None
        if client_ip is None:
            await self._serve_request(stream, ws, request, rest, remote, refusal, key, metrics_only)
            return
        refusal = self.caps.admit_ip(client_ip)
        try:
            await self._serve_request(
                stream,
                ws,
                request,
                rest,
                f"{client_ip} via {remote}",
                refusal,
                ip_key(client_ip),
                metrics_only,
            )
        finally:
            if refusal is None:
                self.caps.release_ip(client_ip)

    async def _serve_request(
        self,
        stream: trio.abc.Stream,
        ws: ServerSocket,
        request: Request,
        rest: bytes,
        remote: str,
        refusal: Refusal | None,
        key: str,
        metrics_only: bool,
    ) -> None:
        """Answer or upgrade one request, whose head is in; then run its connection."""
        try:
            if refusal is not None:  # over the per-IP cap: answer, after reading the request
                await self._refuse(stream, ws, remote, refusal)
                return
            path = request.path.split("?", 1)[0]
            role = None if metrics_only else PATHS.get(path)
            if role is None:
                self.metrics.http_requests += 1
                await stream.send_all(self._plain(ws, request, path, key, metrics_only))
                return
            self._check_throttle(key)
            account, token_hash = await self._authenticate(request, key)
        except http.Refusal as exc:
            await self._answer_refusal(stream, ws, remote, exc)
            return
        refusal = self.caps.admit_account(account)
        if refusal is not None:
            await self._refuse(stream, ws, remote, refusal)
            return
        try:
            early = http.early_frames(request)
            answer, accepted = http.upgrade(ws, request, early)
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
            await self.session.run(conn, early or [])
        finally:
            self.caps.release_account(account)

    async def _answer_refusal(
        self, stream: trio.abc.Stream, ws: ServerSocket, remote: str, exc: http.Refusal
    ) -> None:
        if exc.status == 401:
            self.metrics.drop("auth")  # logged in report_auth's summary, not here
        elif exc.status == 408:
            self.metrics.drop("head_timeout")
        elif exc.status != 429:  # throttled: counted in the summary
            log.debug("bad request from %s: %s", remote, exc)
        if exc.wire:
            await stream.send_all(exc.wire)
        elif exc.status is not None:
            await stream.send_all(http.response(ws, exc.status, f"{exc}\n", headers=exc.headers))

    async def _refuse(
        self, stream: trio.abc.Stream, ws: ServerSocket, remote: str, refusal: Refusal
    ) -> None:
        self.metrics.drop(refusal.drop)
        log.warning("refused %s: %s", remote, refusal.message)
        await stream.send_all(http.response(ws, refusal.status, f"{refusal.message}\n"))

    def _check_throttle(self, key: str) -> None:
        """Refusal(429) for an address with too many refused tokens of late."""
        wait = self.auth.blocked(key, trio.current_time())
        if wait:
            self.metrics.drop("auth_throttled")
            raise http.Refusal(
                429,
                f"too many refused tokens from {key}: try again in {math.ceil(wait)} s",
                (("Retry-After", str(math.ceil(wait))),),
            )

    async def _authenticate(self, request: Request, key: str) -> tuple[str, str]:
        try:
            token_hash = hash_token(http.bearer_token(request))
        except http.Refusal:
            self.auth.failed(key, trio.current_time())
            raise
        try:
            account = await self.tokens.account_for(token_hash)
        except StoreUnavailable as exc:
            log.error("cannot read the account database: %s", exc)
            raise http.Refusal(
                503, "relay cannot read its account database right now: retry in a moment"
            ) from None
        if account is None:
            self.auth.failed(key, trio.current_time())
            raise http.Refusal(
                401,
                "bad token: not a current token on this relay (it may have been "
                "regenerated); ask the relay admin for a new one",
                (("WWW-Authenticate", 'Bearer realm="pio-remote"'),),
            )
        return account, token_hash

    def _plain(
        self, ws: ServerSocket, request: Request, path: str, key: str, metrics_only: bool
    ) -> bytes:
        if path not in ("/healthz", "/metrics"):
            return http.response(ws, 404, f"no such path {path!r}: try /healthz\n")
        if request.method != "GET":
            return http.response(ws, 405, "use GET\n", headers=(("Allow", "GET"),))
        if path == "/healthz":
            return http.response(ws, 200, "ok\n")
        if not metrics_only:
            refused = self._metrics_refusal(ws, request, key)
            if refused is not None:
                return refused
        body = self.metrics.render(self.session.role_counts(), len(self.router.agents))
        return http.response(ws, 200, body.decode(), content_type=CONTENT_TYPE_LATEST)

    def _metrics_refusal(self, ws: ServerSocket, request: Request, key: str) -> bytes | None:
        """The answer to a /metrics request on the main port that may not have them."""
        if self.metrics_token is None:
            return http.response(
                ws,
                404,
                "metrics are not served on this port: the relay admin serves them with "
                "--metrics-token-file (bearer token) or --metrics-bind (docs/relay.md)\n",
            )
        try:
            self._check_throttle(key)
        except http.Refusal as exc:
            return http.response(ws, 429, f"{exc}\n", headers=exc.headers)
        values = request.headers.get_all("Authorization")
        scheme, _, given = (values[0] if len(values) == 1 else "").strip().partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.metrics_token.encode()
        ):
            return None
        self.metrics.drop("auth")
        self.auth.failed(key, trio.current_time())
        return http.response(
            ws,
            401,
            "/metrics needs 'Authorization: Bearer <token>' with the token of the relay's "
            "--metrics-token-file\n",
            headers=(("WWW-Authenticate", 'Bearer realm="pio-remote metrics"'),),
        )
