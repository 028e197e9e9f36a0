"""Running a connection: HELLO, the frame loop, the writer, the goodbye.

The DATA path is kept tight: one socket read yields several frames, each is
one dict lookup, one header rewrite and one queue put; no JSON, no logging,
no decode of the payload. The writer sends whatever is queued in one call.
The reader never waits for room in another connection's queue (see
``fairness.py``); it only waits for its own peer, to answer it or to keep to
its optional rate limit.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import trio

from pio_remote.relay import websocket as wsp
from pio_remote.relay.connection import (
    CLOSE_BAD_INPUT,
    CLOSE_GOING_AWAY,
    CLOSE_NAME_TAKEN,
    CLOSE_REPLACED,
    CLOSE_TIMEOUT,
    LINGER_S,
    RECEIVE_BYTES,
    WRITE_BATCH_BYTES,
    Connection,
    WireBytes,
)
from pio_remote.relay.fairness import QueuePolice
from pio_remote.relay.hello import VersionError, check_hello
from pio_remote.relay.limits import Limits, TokenBucket
from pio_remote.relay.metrics import Metrics
from pio_remote.relay.outbox import Gone
from pio_remote.relay.router import (
    AGENT,
    CLIENT,
    NameTaken,
    Notice,
    Peer,
    ProtocolError,
    Refused,
    Router,
    name_conflict,
)
from pio_remote.wire import envelope
from pio_remote.wire.envelope import FrameType

if TYPE_CHECKING:
    from pio_remote.relay.cluster.nodes import Cluster

log = logging.getLogger("relay")

_DATA = FrameType.DATA


class NameRefused(Exception):
    """An agent's HELLO asked for a name another key holds; the message says whose."""


def _taken_here(holder: Peer) -> NameTaken:
    return NameTaken(holder.key, getattr(holder, "remote", "?"), holder.connected_at)


class Session:
    """Runs connections against one router; owns the set of live connections."""

    def __init__(self, router: Router, metrics: Metrics, limits: Limits) -> None:
        self.router = router
        self.metrics = metrics
        self.limits = limits
        self.police = QueuePolice(router, metrics, limits)
        self.live: set[Connection] = set()
        self.counts = {AGENT: 0, CLIENT: 0}
        self.ended = 0  # connections ended so far (gcfreeze.py counts churn with it)
        # Set when this relay is one node of several (cluster.py).
        self.cluster: Cluster | None = None

    def role_counts(self) -> dict[str, int]:
        return dict(self.counts)

    async def run(self, conn: Connection, early: list[bytes] | None = None) -> None:
        """Serve ``conn`` until it closes, is killed, or the relay stops.

        ``early`` are the frames its upgrade request carried: they come first.
        """
        self.live.add(conn)
        self.counts[conn.role] += 1
        try:
            async with trio.open_nursery() as nursery:
                conn.scope = nursery.cancel_scope
                nursery.start_soon(self._write_loop, conn)
                try:
                    await self._read_loop(conn, early or [])
                except wsp.ProtocolViolation as exc:
                    drop = "oversized" if exc.code == wsp.CLOSE_TOO_BIG else "malformed"
                    self._refuse(conn, drop, str(exc), exc.code)
                    if conn.ending == "close" and exc.code != wsp.CLOSE_TOO_BIG:
                        conn.ending = "linger"  # the stream is no longer parseable
                except NameRefused as exc:
                    self._refuse(conn, "name_taken", str(exc), CLOSE_NAME_TAKEN)
                except ProtocolError as exc:
                    drop = "version" if isinstance(exc, VersionError) else "malformed"
                    self._refuse(conn, drop, str(exc), CLOSE_BAD_INPUT)
                except envelope.EnvelopeError as exc:
                    self._refuse(conn, "malformed", str(exc), CLOSE_BAD_INPUT)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    conn.ended("abort", "connection lost", wsp.CLOSE_ABNORMAL)
                nursery.cancel_scope.cancel()
        finally:
            self.live.discard(conn)
            self.counts[conn.role] -= 1
            self.ended += 1
            conn.outbox.close()  # later frames for us are dropped as peer_gone
            self.police.over.discard(conn)
            if not conn.closing:  # cancelled from outside: the relay is stopping
                conn.kill("shutdown", "relay is shutting down: reconnect later", CLOSE_GOING_AWAY)
            was_online = conn.online
            gone = "agent disconnected" if conn.role == AGENT else "client disconnected"
            self._notify(self.router.remove(conn, gone))
            if was_online and conn.role == AGENT and self.cluster is not None:
                self.cluster.agent_changed(conn)
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await self._goodbye(conn)
            if was_online:
                log.info("%r offline (%s)", conn, conn.close_reason)

    def _refuse(self, conn: Connection, drop: str, message: str, ws_code: int) -> None:
        self.metrics.drop(drop)
        log.info("%r: %s: %s", conn, drop, message)
        conn.kill(drop, message, ws_code)

    async def _read_loop(self, conn: Connection, early: list[bytes]) -> None:
        """Frames from the peer until it closes; DATA takes the short path."""
        greeted = await self._early(conn, early)
        receive = conn.stream.receive_some
        feed = conn.ws.feed
        channels = conn.channels
        metrics = self.metrics
        now = trio.current_time
        rechannel = envelope.rechannel
        queue = self.police.queue
        bucket = None
        if self.limits.rate:
            bucket = TokenBucket(self.limits.rate, self.limits.rate_burst, now())
        while True:
            data = await receive(RECEIVE_BYTES)
            if not data:
                conn.ended("abort", "connection lost", wsp.CLOSE_ABNORMAL)
                return
            conn.last_seen = now()
            if bucket is not None and (delay := bucket.take(conn.last_seen, len(data))):
                metrics.rate_limited += 1
                await trio.sleep(delay)
            for opcode, msg in feed(data):
                if opcode != wsp.OP_BINARY:
                    if await self._ws_control(conn, opcode, msg):
                        return
                    continue
                metrics.frames_in += 1
                metrics.bytes_in += len(msg)
                if greeted and len(msg) >= envelope.HEADER_SIZE and msg[0] == _DATA:
                    route = channels.get(int.from_bytes(msg[1:5], "big"))
                    if route is None:
                        metrics.drops["unknown_channel"] += 1
                        continue
                    target, channel = route
                    out = rechannel(msg, channel)
                    if not self._write_now(target, out):  # type: ignore[arg-type]
                        queue(target, out)  # type: ignore[arg-type]
                elif greeted:
                    await self._control(conn, msg)
                else:
                    await self._hello(conn, msg)
                    greeted = True

    async def _early(self, conn: Connection, early: list[bytes]) -> bool:
        """The frames of the upgrade request, as if they were the first read; True once
        HELLO is among them."""
        greeted = False
        for msg in early:
            self.metrics.frames_in += 1
            self.metrics.bytes_in += len(msg)
            if not greeted:
                await self._hello(conn, msg)
                greeted = True
            elif len(msg) >= envelope.HEADER_SIZE and msg[0] == _DATA:
                route = conn.channels.get(int.from_bytes(msg[1:5], "big"))
                if route is None:
                    self.metrics.drops["unknown_channel"] += 1
                    continue
                target, channel = route
                self.police.queue(target, envelope.rechannel(msg, channel))  # type: ignore[arg-type]
            else:
                await self._control(conn, msg)
        return greeted

    async def _ws_control(self, conn: Connection, opcode: int, msg: bytes) -> bool:
        """WebSocket-level frames; True when the peer closed."""
        if opcode == wsp.OP_PING:  # the protocol framed the pong
            await self._answer(conn, WireBytes(conn.ws.pending()))
        elif opcode == wsp.OP_CLOSE:  # the protocol framed the answering Close
            code = conn.ws.close_code
            conn.ended("echo", f"peer closed ({code})", code)
            return True
        elif opcode == wsp.OP_TEXT:
            raise ProtocolError("text WebSocket message: frames must be binary messages")
        return False  # PONG: liveness only, already noted

    async def _hello(self, conn: Connection, msg: bytes) -> None:
        """Check HELLO, answer WELCOME, put the peer online.

        An agent whose name is held by another key is refused before WELCOME
        (ERROR ``name_taken``); the running agent keeps its name.
        """
        frame = envelope.decode(msg)
        if frame.type is not FrameType.HELLO or frame.channel != envelope.CONTROL_CHANNEL:
            raise ProtocolError(
                f"expected HELLO on channel 0 first, got {frame.type.name} "
                f"on channel {frame.channel}"
            )
        hello = check_hello(frame.json(), conn.role)
        if hello is not None:
            await self._claim_name(conn, hello.name, hello.key, hello.shares)
        welcome = {
            "version": envelope.PROTOCOL_VERSION,
            "account": conn.account,
            "max_frame": envelope.MAX_FRAME_SIZE,
        }
        if self.cluster is not None:
            welcome["node"] = self.cluster.node_id
        await self._answer(conn, envelope.encode_json(FrameType.WELCOME, 0, welcome))
        if hello is None:
            self.router.add_client(conn)
            log.info("%r online", conn)
            return
        if conn.closing:  # killed while waiting to send WELCOME
            return
        holder = self.router.holder(conn.account, hello.name)
        if name_conflict(holder, hello.key):  # came on this node while we sent WELCOME
            assert holder is not None
            if self.cluster is not None:  # our claim may have overwritten its row
                self.cluster.rewrite(conn.account, hello.name)
            raise NameRefused(_taken_here(holder).message(conn.account, hello.name))
        conn.set_agent(hello.name, hello.shares, hello.key)
        old = self.router.add_agent(conn)
        if self.cluster is not None:
            self.cluster.agent_changed(conn)
        log.info("%r online (shared with %s)", conn, ", ".join(sorted(conn.shares)) or "nobody")
        if old is not None:
            notices = self.router.remove(old, "agent replaced")
            log.info("%r replaces %r (same key: the same agent reconnecting)", conn, old)
            old.kill(  # type: ignore[attr-defined]
                "replaced",
                f"another agent named '{conn.name}' connected for account '{conn.account}' "
                "with this agent's key (a second process of the same home, or this agent "
                "restarted): that one serves now",
                CLOSE_REPLACED,
            )
            self._notify(notices)

    async def _claim_name(
        self, conn: Connection, name: str, key: str, shares: frozenset[str]
    ) -> None:
        """Raise NameRefused if another key holds ``name`` here (or on a live node)."""
        holder = self.router.holder(conn.account, name)
        if name_conflict(holder, key):
            assert holder is not None
            raise NameRefused(_taken_here(holder).message(conn.account, name))
        if self.cluster is not None and holder is None:
            taken = await self.cluster.claim(conn.account, name, key, shares, conn.remote)
            if taken is not None:
                raise NameRefused(taken.message(conn.account, name))

    async def _control(self, conn: Connection, msg: bytes) -> None:
        frame = envelope.decode(msg)
        ftype, channel = frame.type, frame.channel
        if ftype is FrameType.CLOSE:
            route = self.router.close(conn, channel)
            if route is None:
                self.metrics.drop("unknown_channel")
                return
            target, other = route
            self.police.queue(target, envelope.rechannel(msg, other))  # type: ignore[arg-type]
        elif ftype is FrameType.PING or ftype is FrameType.PONG:
            if channel != envelope.CONTROL_CHANNEL:
                raise ProtocolError(f"{ftype.name} on channel {channel}: it belongs on channel 0")
            if ftype is FrameType.PING:
                await self._answer(conn, envelope.encode(FrameType.PONG, 0, frame.payload))
        elif ftype is FrameType.OPEN and conn.role == CLIENT:
            await self._open(conn, channel, frame.text())
        elif ftype is FrameType.LIST and conn.role == CLIENT:
            await self._answer(conn, await self._list_frame(conn.account, channel))
        elif ftype is FrameType.HELLO:
            raise ProtocolError("HELLO sent twice")
        else:
            raise ProtocolError(f"{ftype.name} frames are not accepted from {conn.role}s")

    async def _open(self, client: Connection, cid: int, ref: str) -> None:
        result = self.router.open(client, cid, ref)
        if isinstance(result, Refused):
            self.metrics.drop(result.drop)
            await self._answer(
                client, envelope.encode(FrameType.CLOSE, cid, result.reason.encode())
            )
            return
        agent = result.agent
        # OPENED goes first: if the agent vanishes meanwhile, its CLOSE follows it.
        opened = {"agent": agent.ref, "key": agent.key}
        await self._answer(client, envelope.encode_json(FrameType.OPENED, cid, opened))
        open_frame = envelope.encode(FrameType.OPEN, result.aid, client.account.encode())
        self.police.queue(agent, open_frame)  # type: ignore[arg-type]

    async def _list_frame(self, account: str, rid: int) -> bytes:
        if self.cluster is not None:  # every node's agents, from the database
            agents = await self.cluster.list_agents(account)
        else:
            agents = self.router.list_agents(account)
        payload = json.dumps(agents, separators=(",", ":")).encode()
        while len(payload) > envelope.MAX_PAYLOAD:  # thousands of agents: send what fits
            agents = agents[: len(agents) * envelope.MAX_PAYLOAD // len(payload) - 1]
            payload = json.dumps(agents, separators=(",", ":")).encode()
        return envelope.encode(FrameType.LIST, rid, payload)

    async def _answer(self, conn: Connection, frame: bytes) -> None:
        """Queue an answer to ``conn``'s own peer, waiting for room: a peer that does
        not read its answers stops being read (and holds up no one else)."""
        try:
            await conn.outbox.put_own(frame)
        except Gone:
            self.metrics.drop("peer_gone")

    def ping(self, conn: Connection, frame: bytes) -> None:
        """The sweeper's keepalive PING: straight to an idle socket, else queued if
        there is room (a busy connection needs no ping; the next sweep looks again)."""
        if not self._write_now(conn, frame) and conn.outbox.size < conn.outbox.bound:
            conn.outbox.put(frame)

    def _write_now(self, target: Connection, frame: bytes) -> bool:
        """Write ``frame`` to an idle peer's socket from this (the sender's) task.

        When the peer's writer is parked on an empty queue, handing it the frame
        costs a task switch and a scheduler pass for nothing. What the socket
        does not take now goes to the queue as wire bytes, where the writer sends
        it before anything else, so frames stay whole and in order. False: not
        idle (or not plain TCP), queue the frame as usual.
        """
        try_send = getattr(target.stream, "try_send", None)
        outbox = target.outbox
        if try_send is None or target.closing or not outbox.idle:
            return False
        wire = target.ws.frame(frame)
        try:
            sent = try_send(wire)
        except trio.BrokenResourceError:
            return False  # the writer finds out and ends the connection
        if sent < len(wire):
            outbox.put(WireBytes(wire[sent:]))
        self.metrics.frames_out += 1
        self.metrics.bytes_out += len(frame)
        return True

    async def _write_loop(self, conn: Connection) -> None:
        """Drain the send queue to the socket: all queued frames in one write."""
        send_all = conn.stream.send_all
        frames_of = conn.ws.frames
        metrics = self.metrics
        now = trio.current_time
        take = conn.outbox.take
        while True:
            parts: list[bytes] = []  # wire bytes, in order
            payloads: list[bytes] = []  # frames to frame after them
            frames = size = 0
            for item in await take(WRITE_BATCH_BYTES):
                if type(item) is bytes:
                    payloads.append(item)
                    frames += 1
                    size += len(item)
                else:  # already wire bytes: whatever was framed before goes first
                    parts.append(frames_of(payloads))
                    parts.append(item)
                    payloads = []
            parts.append(frames_of(payloads))
            conn.writing_since = now()
            # Shielded: a frame cut in half would corrupt the stream. kill()
            # gives this scope a short deadline instead.
            with trio.CancelScope(shield=True) as scope:
                conn.write_scope = scope
                try:
                    await send_all(b"".join(parts))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    conn.ended("abort", "connection lost", wsp.CLOSE_ABNORMAL)
                    conn.ending = "abort"  # even if a kill() got here first
                    if conn.scope is not None:
                        conn.scope.cancel()
                    return
                finally:
                    conn.write_scope = None
                    conn.writing_since = 0.0
            if scope.cancelled_caught:
                conn.ending = "abort"
                return
            metrics.frames_out += frames
            metrics.bytes_out += size

    def _notify(self, notices: list[Notice]) -> None:
        """Queue the CLOSE notices owed to the other ends of a peer's channels."""
        for notice in notices:
            frame = envelope.encode(FrameType.CLOSE, notice.channel, notice.reason.encode())
            peer: Connection = notice.peer  # type: ignore[assignment]
            if not peer.outbox.closed:
                self.police.queue(peer, frame)

    async def _goodbye(self, conn: Connection) -> None:
        """ERROR (if any) and the close handshake, as far as the stream allows."""
        stream = conn.stream
        try:
            if conn.ending == "abort":
                return
            error = None if conn.ending == "echo" else conn.goodbye
            await stream.send_all(conn.ws.goodbye(error, conn.close_code, conn.close_reason))
            if conn.ending == "echo":
                return
            if conn.ending == "linger" or conn.ws.proto.parser_exc is not None:
                with trio.move_on_after(LINGER_S):
                    while await stream.receive_some(RECEIVE_BYTES):
                        pass
                return
            while data := await stream.receive_some(RECEIVE_BYTES):  # until the peer's Close
                if any(op == wsp.OP_CLOSE for op, _ in conn.ws.feed(data)):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, wsp.ProtocolViolation):
            pass
