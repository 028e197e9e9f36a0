"""A TCP proxy between a peer and the relay that records and can tamper with traffic.

It sees exactly the bytes the relay receives and forwards on that connection,
so a test can prove what the relay could read, and what happens when a relay
alters one bit.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable


class WsFrameTamper:
    """Parses unmasked server->client WebSocket frames and flips one bit in one of them.

    ``should_flip(payload)`` sees each binary message's payload (an envelope frame)
    and says whether to corrupt it; only the first match is corrupted.
    """

    def __init__(self, should_flip: Callable[[bytes], bool]):
        self.should_flip = should_flip
        self.buf = bytearray()
        self.done = False
        self.in_http = True  # the upgrade response comes first, as plain HTTP

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return data
        self.buf += data
        out = bytearray()
        if self.in_http:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return b""
            out += self.buf[: end + 4]
            del self.buf[: end + 4]
            self.in_http = False
        while not self.done and (frame_len := self._frame_length()) is not None:
            if len(self.buf) < frame_len:
                break
            frame = bytes(self.buf[:frame_len])
            del self.buf[:frame_len]
            out += self._frame(frame, frame[frame_len - self._payload_len(frame) :])
        if self.done:
            out += self.buf
            self.buf.clear()
        return bytes(out)

    def _frame(self, frame: bytes, payload: bytes) -> bytes:
        """One whole frame, as it goes on: the first matching binary message flipped."""
        if frame[0] & 0x0F == 0x2 and self.should_flip(payload):
            self.done = True
            return frame[:-1] + bytes([frame[-1] ^ 0x01])
        return frame

    def _payload_len(self, frame: bytes | bytearray) -> int:
        n = frame[1] & 0x7F
        if n == 126:
            return struct.unpack_from(">H", frame, 2)[0]
        if n == 127:
            return struct.unpack_from(">Q", frame, 2)[0]
        return n

    def _frame_length(self) -> int | None:
        b = self.buf
        if len(b) < 2:
            return None
        n = b[1] & 0x7F
        if b[1] & 0x80:
            raise AssertionError("server frames are never masked")
        if n == 126:
            if len(b) < 4:
                return None
            return 4 + struct.unpack_from(">H", b, 2)[0]
        if n == 127:
            if len(b) < 10:
                return None
            return 10 + struct.unpack_from(">Q", b, 2)[0]
        return 2 + n


class Proxy:
    """Forwards 127.0.0.1:port to the relay; records both directions of every connection."""

    def __init__(self, relay_port: int, tamper: Callable[[], WsFrameTamper] | None = None):
        self.relay_port = relay_port
        self.tamper = tamper
        self.recorded = bytearray()
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}"
        self.conns: list[socket.socket] = []
        self.down = False  # cut(): the path is gone, connections are dropped at once
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        """The path goes away: live connections drop, new ones are closed on arrival."""
        self.down = True
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def restore(self) -> None:
        self.down = False

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.sock.accept()
            except OSError:
                return
            if self.down:
                down.close()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.relay_port))
            except OSError:  # the relay is down: so is this connection
                down.close()
                continue
            self.conns += [down, up]
            tamper = self.tamper() if self.tamper else None
            threading.Thread(target=self._pump, args=(down, up, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, tamper), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, tamper: WsFrameTamper | None) -> None:
        try:
            while data := src.recv(65536):
                with self.lock:
                    self.recorded += data
                if tamper is not None:
                    data = tamper.feed(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


class WsFrameRewriter(WsFrameTamper):
    """Rewrites server->client binary messages: ``rewrite(payload)`` returns the new one.

    What a relay that lies could send: unlike a flipped bit, the result is a
    well-formed envelope frame with different content (e.g. OPEN relabelled with
    another account). ``rewritten`` counts the messages that changed.
    """

    def __init__(self, rewrite: Callable[[bytes], bytes]):
        super().__init__(lambda payload: False)
        self.rewrite = rewrite
        self.rewritten = 0

    def _frame(self, frame: bytes, payload: bytes) -> bytes:
        new = self.rewrite(payload) if frame[0] & 0x0F == 0x2 else payload
        if new == payload:
            return frame
        self.rewritten += 1
        return _ws_frame(frame[0], new)


def _ws_frame(first_byte: int, payload: bytes) -> bytes:
    """An unmasked (server->client) WebSocket frame."""
    n = len(payload)
    if n < 126:
        header = struct.pack(">BB", first_byte, n)
    elif n < 65536:
        header = struct.pack(">BBH", first_byte, 126, n)
    else:
        header = struct.pack(">BBQ", first_byte, 127, n)
    return header + payload
