"""A relay that lies: it answers HELLO properly, then LIST and OPEN with what it is told.

Run as ``python fakerelay.py LIST_JSON OPENED_JSON [WELCOME_JSON]``; it prints
``fake relay listening on ws://127.0.0.1:PORT`` and serves until killed. The
clients under test must turn each malformed answer into one line, not a traceback.
"""

from __future__ import annotations

import json
import sys

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

from pio_remote.wire import envelope
from pio_remote.wire.envelope import FrameType


def main(list_payload: str, opened_payload: str, welcome_payload: str = "") -> None:
    def handler(ws: ServerConnection) -> None:
        try:
            hello = envelope.decode(ws.recv())
            assert hello.type is FrameType.HELLO
            welcome = {"version": 1, "account": "alice", "max_frame": envelope.MAX_FRAME_SIZE}
            answer = welcome_payload.encode() or json.dumps(welcome).encode()
            ws.send(envelope.encode(FrameType.WELCOME, 0, answer))
            while True:
                frame = envelope.decode(ws.recv())
                if frame.type is FrameType.LIST:
                    ws.send(envelope.encode(FrameType.LIST, frame.channel, list_payload.encode()))
                elif frame.type is FrameType.OPEN:
                    answer = opened_payload.encode()
                    ws.send(envelope.encode(FrameType.OPENED, frame.channel, answer))
        except ConnectionClosed:
            pass

    with serve(handler, "127.0.0.1", 0, max_size=2 * envelope.MAX_FRAME_SIZE) as server:
        port = server.socket.getsockname()[1]
        print(f"fake relay listening on ws://127.0.0.1:{port}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:4])
