"""The echo drivers' control loop (relay-load, scale): runs on command, results on stdout."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any


async def serve_echo_runs(count: int, measure: Callable[..., Any]) -> None:
    """The echo drivers' control loop: each ``run SECONDS`` line on stdin runs
    ``measure(index, seconds, rtts)`` for every session at once and prints the round
    trips as one ``rtts [...]`` line (µs); any other line, or the end of stdin, returns."""
    import trio

    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    pending = b""
    while chunk := await stdin.receive_some(1024):
        *commands, pending = (pending + chunk).split(b"\n")
        for command in commands:
            verb, _, arg = command.decode().partition(" ")
            if verb != "run":
                return
            rtts: list[float] = []
            async with trio.open_nursery() as runs:
                for index in range(count):
                    runs.start_soon(measure, index, float(arg), rtts)
            print("rtts " + json.dumps([round(x * 1e6, 1) for x in rtts]), flush=True)
