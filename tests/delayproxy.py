"""A userspace WAN: a TCP proxy that delays each chunk, caps the rate, and keeps a trace.

Used by tests (round-trip counts) and by ``scripts/bench wan``. Each accepted
connection gets a fresh connection to the target, and each direction of it:

- is delayed by half the round trip, in order (a chunk leaves no earlier than
  the one before it);
- optionally goes through a link of ``rate`` bits per second (a chunk occupies
  the link for its size / rate, as on a bottleneck);
- holds at most ``queue_bytes`` in the proxy, after which the proxy stops
  reading and TCP pushes back, as a router's buffer does.

The TCP handshake is added back: the first byte goes on one round trip late.
The trace records, per connection, when the client's bytes arrived, when the
server's bytes were handed to the client, and when the client closed;
``round_trips`` counts from it how many times the client waited for an answer.
The proxy runs its own trio loop in a thread, so a synchronous test can start
it beside subprocesses.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import trio

CHUNK = 64 * 1024
QUEUE_BYTES = 4 * 1024 * 1024


@dataclass
class Conn:
    """One proxied connection's trace: (time, bytes) of each direction, and the close."""

    opened: float
    up: list[tuple[float, int]] = field(default_factory=list)  # client -> server, on arrival
    down: list[tuple[float, int]] = field(default_factory=list)  # server -> client, delivered
    up_out: list[tuple[float, int]] = field(default_factory=list)  # client -> server, delivered
    closed: float | None = None  # the client's EOF

    def timeline(self) -> str:
        """The trace, one line per event, in ms from the connection's start (for failures)."""
        events = [(t, f"up {n}") for t, n in self.up] + [(t, f"down {n}") for t, n in self.down]
        if self.closed is not None:
            events.append((self.closed, "client closed"))
        lines = [f"{(t - self.opened) * 1000:8.1f} ms  {what}" for t, what in sorted(events)]
        return "\n".join(lines)

    def round_trips(self, rtt: float) -> int:
        """Times the client waited for an answer, the TCP handshake included.

        A wait is a pause of at least half a round trip in what the client
        sends, during which the server's bytes reached it; the pause before the
        client's close counts too (a close that waits for the peer's close).
        """
        marks = [t for t, _ in self.up] + ([self.closed] if self.closed is not None else [])
        waits = 1  # SYN, SYN-ACK
        for before, after in zip(marks, marks[1:], strict=False):
            if after - before >= rtt / 2 and any(before < t <= after for t, _ in self.down):
                waits += 1
        return waits

    def data_rate(self, low: float = 0.1, high: float = 0.9) -> float:
        """Bits per second delivered to the server while the upload went from ``low``
        to ``high`` of its bytes: the steady part of a transfer, without set-up."""
        total = sum(n for _, n in self.up_out)
        done = 0
        start = end = None
        start_bytes = 0
        for t, n in self.up_out:
            done += n
            if start is None and done >= low * total:
                start, start_bytes = t, done
            if done >= high * total:
                end = t
                break
        if start is None or end is None or end <= start:
            return 0.0
        return (done - start_bytes) * 8 / (end - start)


class _Direction:
    """One way through the proxy: a byte-bounded queue of chunks and the link's clock."""

    def __init__(self, delay: float, rate: float, queue_bytes: int) -> None:
        self.delay = delay
        self.rate = rate
        self.queue_bytes = queue_bytes
        self.chunks: deque[tuple[float, bytes]] = deque()  # (deliver at, data); None: EOF
        self.size = 0
        self.eof = False
        self.link_free = 0.0
        self.changed = trio.Event()

    def put(self, now: float, data: bytes) -> None:
        start = max(now, self.link_free)
        done = start + (len(data) * 8 / self.rate if self.rate else 0.0)
        self.link_free = done
        self.chunks.append((done + self.delay, data))
        self.size += len(data)
        self.changed.set()

    async def room(self) -> None:
        while self.size >= self.queue_bytes:
            self.changed = trio.Event()
            await self.changed.wait()

    async def next(self) -> tuple[float, bytes] | None:
        while not self.chunks:
            if self.eof:
                return None
            self.changed = trio.Event()
            await self.changed.wait()
        when, data = self.chunks.popleft()
        self.size -= len(data)
        self.changed.set()
        return when, data


class DelayProxy:
    """``with DelayProxy(port, rtt=0.15) as proxy:`` connect to 127.0.0.1:``proxy.port``."""

    def __init__(
        self,
        target_port: int,
        rtt: float,
        rate: float = 0.0,
        queue_bytes: int = QUEUE_BYTES,
    ) -> None:
        self.target_port = target_port
        self.rtt = rtt
        self.rate = rate
        self.queue_bytes = queue_bytes
        self.port = 0
        self.conns: list[Conn] = []
        self._ready = threading.Event()
        self._stop: trio.CancelScope | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> DelayProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("delay proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None and self._stop is not None:
            self._token.run_sync_soon(self._stop.cancel)
        self._thread.join(10)

    def reset(self) -> None:
        """Forget the trace so far."""
        with self._lock:
            self.conns = []

    def snapshot(self) -> list[Conn]:
        with self._lock:
            return list(self.conns)

    # ---- the trio side -------------------------------------------------------------

    def _main(self) -> None:
        trio.run(self._serve)

    async def _serve(self) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._stop:
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(trio.serve_listeners, self._handle, [listener])
                self._ready.set()

    async def _handle(self, client: trio.SocketStream) -> None:
        conn = Conn(trio.current_time())
        with self._lock:
            self.conns.append(conn)
        try:
            server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        half = self.rtt / 2
        up = _Direction(half, self.rate, self.queue_bytes)
        down = _Direction(half, self.rate, self.queue_bytes)
        # The handshake: the client's first byte leaves one round trip late.
        up.link_free = conn.opened + self.rtt
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._read, client, up, conn.up, conn, True)
            nursery.start_soon(self._write, up, server, conn.up_out)
            nursery.start_soon(self._read, server, down, None, conn, False)
            nursery.start_soon(self._write, down, client, conn.down)

    async def _read(
        self,
        source: trio.SocketStream,
        way: _Direction,
        trace: list[tuple[float, int]] | None,
        conn: Conn,
        from_client: bool,
    ) -> None:
        try:
            while True:
                await way.room()
                data = await source.receive_some(CHUNK)
                now = trio.current_time()
                if not data:
                    break
                if trace is not None:
                    trace.append((now, len(data)))
                way.put(now, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        if from_client:
            conn.closed = trio.current_time()
        way.eof = True
        way.changed.set()

    async def _write(
        self, way: _Direction, sink: trio.SocketStream, trace: list[tuple[float, int]] | None
    ) -> None:
        try:
            while (item := await way.next()) is not None:
                when, data = item
                await trio.sleep_until(when)
                if trace is not None:  # before the send: the peer may answer within it
                    trace.append((trio.current_time(), len(data)))
                await sink.send_all(data)
            # The EOF follows the last byte, after the same delay.
            await trio.sleep(way.delay)
            await sink.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The other side is gone: so is this connection (a reset, as TCP would).
            pass
