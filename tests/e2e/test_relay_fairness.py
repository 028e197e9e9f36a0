"""One slow reader never stalls anyone else: real relay, agent and client processes."""

from __future__ import annotations

import os
import signal
import sys
import urllib.request
from pathlib import Path

import psutil
import trio

from pio_remote.client.api import Client, wait_result

HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024
# Calls streaming at once in the stopped client: 1 MiB of credit each, far more
# than the kernel's socket buffers and the relay's queue bound can hold.
STREAMS = 48
# A round trip that takes this long is a stall: behind the stopped client, the
# relay used to hold the agent's frames for up to the 45 s write-stall limit.
STALL_S = 3.0


def relay_metric(port: int, token: str, name: str) -> float:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    raise KeyError(name)


async def test_a_stopped_client_loses_its_session_and_stalls_no_one(world, tmp_path) -> None:
    world.relay.stop()
    token_file = tmp_path / "metrics-token"
    token_file.touch(mode=0o600)
    token_file.write_text("fairness-metrics-token")
    world.relay.start(
        extra=("--send-queue-bytes", "1MiB", "--slow-consumer-grace", "1")
        + ("--metrics-token-file", str(token_file))
    )
    relay = psutil.Process(world.relay.proc.popen.pid)  # type: ignore[union-attr]
    alice = world.machine("alice", "alice")
    bob = world.machine("bob", "bob")
    world.start_agent(alice, "lab", "-s", "bob", "--port-glob", str(tmp_path / "none*"))
    world.pair(alice, bob, "lab")
    rss_before = relay.memory_info().rss

    slow = world.spawn(
        [sys.executable, str(HERE / "streamclient.py"), "lab", str(STREAMS)], bob.env
    )
    slow.wait_for("streaming", timeout=60)
    os.kill(slow.popen.pid, signal.SIGSTOP)
    try:
        message = bytes(range(64))
        token = world.account("alice")
        async with (
            Client.connect(world.relay.url, token, alice.home) as client,
            client.session("lab") as session,
            session.open_call("diag.echo") as call,
        ):
            rounds = 0
            shed = 0.0
            while not shed or rounds < 200:
                with trio.fail_after(STALL_S):
                    await call.send(message)
                    got = b""
                    while len(got) < len(message):
                        item = await call.receive()
                        assert isinstance(item, bytes), item
                        got += item
                assert got == message
                rounds += 1
                if rounds % 50 == 0:  # between round trips, ask the relay what it did
                    shed = await trio.to_thread.run_sync(
                        relay_metric,
                        world.relay.port,
                        "fairness-metrics-token",
                        'relay_drops_total{reason="slow_consumer"}',
                    )
                    assert rounds < 20_000, "the stopped client's session was never closed"
            rss_after = relay.memory_info().rss
            await call.send_eof()
            assert await wait_result(call) == rounds * len(message)
    finally:
        os.kill(slow.popen.pid, signal.SIGCONT)
    assert shed == 1
    # What the relay held for the stopped client is bounded by twice the queue bound.
    assert rss_after - rss_before < 32 * MiB, (rss_before, rss_after)
    # Woken up, the client reads what was already on its way, then the relay's reason.
    returncode = await trio.to_thread.run_sync(lambda: slow.popen.wait(30))
    stderr = slow.stderr_text()
    assert returncode == 1, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines() == [
        "Error: the relay closed the session with agent 'alice/lab' (slow_consumer): this "
        "client read too slowly: more than 2 MiB waited for it: a client that is suspended "
        "or too busy to read falls behind; retry"
    ]
