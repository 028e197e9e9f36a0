"""An attacker process for the relay's per-IP limits, from a source address of its own.

    python attacker.py silent SRC HOST PORT RATE SECONDS
        opens RATE TCP connections a second from SRC and never sends a byte;
        holds them all until SECONDS are up.
    python attacker.py tokens SRC HOST PORT COUNT SECONDS
        tries up to COUNT made-up tokens (one WebSocket upgrade each, one after
        another) within SECONDS, and counts the relay's answers.

Prints ``attacking`` once the first connection is made, then one JSON line of
counts when done. Bounded in count and time, so a test cannot run away.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections import Counter


def silent(src: str, addr: tuple[str, int], rate: float, seconds: float) -> dict[str, int]:
    held: list[socket.socket] = []
    counts: Counter[str] = Counter()
    start = time.monotonic()
    n = 0
    while (now := time.monotonic()) - start < seconds:
        due = int((now - start) * rate) + 1
        while n < due:
            sock = socket.socket()
            sock.setblocking(False)
            sock.bind((src, 0))
            counts["connects"] += 1
            if sock.connect_ex(addr) not in (0, 115):  # 115: EINPROGRESS
                counts["failed"] += 1
            held.append(sock)
            n += 1
            if n == 1:
                print("attacking", flush=True)
            if n == int(rate * seconds / 2):
                print("halfway", flush=True)
        time.sleep(0.002)
    for sock in held:
        sock.close()
    return dict(counts)


def tokens(src: str, addr: tuple[str, int], count: int, seconds: float) -> dict[str, int]:
    counts: Counter[str] = Counter()
    start = time.monotonic()
    for n in range(count):
        if time.monotonic() - start > seconds:
            break
        head = (
            "GET /v1/client HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer guess{n:06d}\r\n\r\n"
        )
        try:
            with socket.create_connection(addr, timeout=5, source_address=(src, 0)) as sock:
                if n == 0:
                    print("attacking", flush=True)
                sock.sendall(head.encode())
                answer = sock.recv(64)
        except OSError:
            answer = b""
        status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "closed"
        counts[status] += 1
    return dict(counts)


def main(argv: list[str]) -> None:
    mode, src, host, port, amount, seconds = argv
    addr = (host, int(port))
    if mode == "silent":
        result = silent(src, addr, float(amount), float(seconds))
    else:
        result = tokens(src, addr, int(amount), float(seconds))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
