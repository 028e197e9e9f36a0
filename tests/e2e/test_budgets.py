"""Budgets with real relay, agent and client processes: disk quota and cap, memory.

A paired client is the attacker here: it may use the agent, but it must not be
able to fill the agent's disk or memory. Disk usage is measured on the agent's
disk (blocks, each inode once); memory as the agent's RSS (psutil).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from contextlib import AsyncExitStack
from pathlib import Path

import psutil
import pytest
import trio

from pio_remote.client.api import AgentSession, Client, RemoteError, wait_result
from pio_remote.net.channel import ChannelClosed

MIB = 1024 * 1024
INI = b"[env:x]\nplatform = native\n"


class Lab:
    """One agent with a small agent.toml, and client machines paired with it."""

    def __init__(self, world, tmp: Path, toml: str):
        self.world = world
        self.machine = world.machine("lab", "alice")
        (self.machine.home / "agent.toml").write_text(toml)
        self.work = self.machine.home / "work"
        self.desks: dict[str, object] = {}
        self.agent = world.start_agent(self.machine, "lab-pi")

    def desk(self, label: str):
        if label not in self.desks:
            env = self.world.machine(label, "alice")
            self.world.pair(self.machine, env, "lab-pi")
            self.desks[label] = env
        return self.desks[label]

    def connect(self, label: str = "desk"):
        env = self.desk(label)
        return Client.connect(self.world.relay.url, self.world.tokens["alice"], home_path=env.home)


def disk_usage(path: Path) -> int:
    """Bytes the tree takes on disk: its blocks, each inode counted once (hard links)."""
    seen: set[int] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total


async def put(agent: AgentSession, data: bytes, name: str = "blob.bin") -> str:
    sha = hashlib.sha256(data).hexdigest()
    async with agent.open_call("upload.put", name=name, size=len(data), sha256=sha) as call:
        await call.send(data)
        await call.send_eof()
        await wait_result(call)
    return sha


async def sync(agent: AgentSession, project: str, index: dict[str, list[object]]) -> dict:
    async with agent.open_call("project.sync", project=project) as call:
        await call.send(json.dumps(index).encode())
        await call.send_eof()
        return await wait_result(call)


QUOTA_TOML = """
max_upload_bytes = 16777216
client_disk_quota_bytes = 8388608
agent_disk_cap_bytes = 12582912
allow_remote_build = true
"""


async def test_project_sync_flood_with_fresh_ids_stays_within_the_quota(world, tmp_path):
    """Attacker syncs one 1 MiB file into 30 fresh project ids (60 bytes of traffic each)
    -> the agent's disk must not grow past the client's quota: the oldest projects are
    evicted, and a project that can never fit gets one `quota` line naming the key."""
    lab = Lab(world, tmp_path, QUOTA_TOML)
    big = secrets.token_bytes(MIB)
    async with lab.connect() as client, client.session("lab-pi") as agent:
        ini_sha = await put(agent, INI, "platformio.ini")
        big_sha = await put(agent, big)
        index = {"platformio.ini": [len(INI), ini_sha], "src/main.c": [len(big), big_sha]}
        ids = [secrets.token_hex(16) for _ in range(30)]
        for pid in ids:
            assert (await sync(agent, pid, index))["updated"] == 2
            assert disk_usage(lab.work) <= 8 * MIB + 256 * 1024
        owner_dir = next((lab.work / "projects").iterdir())
        kept = {p.name for p in owner_dir.iterdir()}
        assert ids[-1] in kept and ids[0] not in kept  # least recently used went first
        assert len(kept) < 8
        # Asking about fresh ids costs no disk at all.
        for _ in range(50):
            async with agent.open_call("project.index", project=secrets.token_hex(16)) as call:
                with pytest.raises(RemoteError):  # no PlatformIO here; never a directory
                    await wait_result(call)
        assert {p.name for p in owner_dir.iterdir()} == kept
        # One project bigger than the quota: refused before anything is written.
        huge = {**index, "src/big.bin": [9 * MIB, "ab" * 32]}
        with pytest.raises(RemoteError) as err:
            await sync(agent, secrets.token_hex(16), huge)
        assert err.value.code == "quota"
        message = str(err.value)
        assert "\n" not in message and "client_disk_quota_bytes" in message
        assert "per-client disk quota of 8.0 MiB" in message and "your usage is" in message
    assert disk_usage(lab.work) <= 8 * MIB + 256 * 1024


async def test_distinct_blobs_from_two_clients_never_take_the_agent_over_its_cap(world, tmp_path):
    """Two clients put 1 MiB blobs as fast as they can, all fresh (none past a grace
    period) -> the cache must never exceed the agent's hard cap, nor one client its quota."""
    lab = Lab(world, tmp_path, QUOTA_TOML)
    peak = 0
    last: dict[str, str] = {}

    async def flood(label: str) -> None:
        nonlocal peak
        async with lab.connect(label) as client, client.session("lab-pi") as agent:
            for _ in range(14):
                last[label] = await put(agent, secrets.token_bytes(MIB))
                peak = max(peak, disk_usage(lab.work / "cache"))

    lab.desk("desk"), lab.desk("desk2")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood, "desk")
        nursery.start_soon(flood, "desk2")
    assert peak <= 12 * MIB
    assert disk_usage(lab.work) <= 12 * MIB + 256 * 1024
    cached = {p.name for p in (lab.work / "cache").iterdir()}
    assert set(last.values()) <= cached  # the newest of each client stayed
    # The ledger of owners survives a restart: the cap still holds after it.
    lab.agent.stop()
    lab.agent = world.start_agent(lab.machine, "lab-pi")
    async with lab.connect("desk") as client, client.session("lab-pi") as agent:
        for _ in range(6):
            await put(agent, secrets.token_bytes(MIB))
            assert disk_usage(lab.work / "cache") <= 12 * MIB


MEMORY_TOML = """
session_memory_bytes = 4194304
agent_memory_bytes = 8388608

[[uploader]]
ports = "*.local"
command = "true"
"""


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


async def test_calls_that_never_read_their_input_do_not_grow_the_agent(world, tmp_path):
    """Attacker opens 64 calls in each of 4 sessions that never read their input, and
    pushes 1 MiB into each -> the agent's RSS must stay bounded (on main it grows by
    ~64 MiB a session), and another client still gets its device list."""
    # The relay's own shedding of slow readers is not under test: let it queue all.
    world.relay.stop()
    world.relay.start(extra=("--send-queue-bytes", str(512 * MIB), "--slow-consumer-grace", "60"))
    lab = Lab(world, tmp_path, MEMORY_TOML)
    lab.desk("victim")
    before = rss(lab.agent.pid)
    pushed = 0
    closed: list[str] = []

    async def stuffed_session(client: Client, ready: trio.Event) -> None:
        nonlocal pushed
        async with (
            client.session("lab-pi") as agent,
            AsyncExitStack() as calls,
            trio.open_nursery() as nursery,
        ):
            for _ in range(64):
                # Holds a lease while it lives, and never reads its input.
                port = f"b{secrets.token_hex(4)}.local"
                call = await calls.enter_async_context(agent.open_call("device.lock", port=port))
                nursery.start_soon(push, call)
            ready.set()
            await trio.sleep_forever()

    async def push(call) -> None:
        nonlocal pushed
        chunk = bytes(64 * 1024)
        for _ in range(16):
            try:
                await call.send(chunk)
            except ChannelClosed as exc:
                closed.append(str(exc))
                return
            pushed += len(chunk)

    async with lab.connect("desk") as attacker, trio.open_nursery() as nursery:
        readies = [trio.Event() for _ in range(4)]
        for ready in readies:
            nursery.start_soon(stuffed_session, attacker, ready)
        with trio.fail_after(30):
            for ready in readies:
                await ready.wait()
        # Give the flood time to land: without budgets every window fills within seconds,
        # and the agent's RSS follows once it has read what the relay queued.
        with trio.move_on_after(10):
            while pushed < 4 * 64 * MIB or rss(lab.agent.pid) - before < 200 * MIB:
                await trio.sleep(0.1)
        grown = rss(lab.agent.pid) - before
        async with lab.connect("victim") as victim, victim.session("lab-pi") as agent:
            with trio.fail_after(15):
                assert isinstance(await agent.call("device.list"), list)
        assert grown < 8 * MIB + 24 * MIB, f"agent RSS grew by {grown / MIB:.0f} MiB"
        assert closed == []  # backpressure: the sessions wait, nothing fails
        assert pushed <= 4 * MIB + 64 * 1024 * 4  # only what a budget granted got through
        nursery.cancel_scope.cancel()


async def test_calls_past_the_session_budget_wait_their_turn_and_all_finish(world, tmp_path):
    """Eight uploads at once in one session whose budget holds three windows: the
    starved calls wait for credit (backpressure) and every byte arrives; none fails."""
    lab = Lab(world, tmp_path, MEMORY_TOML)
    size = 4 * MIB
    results: list[int] = []

    async def sink(agent: AgentSession) -> None:
        async with agent.open_call("diag.sink") as call:
            block = bytes(256 * 1024)
            for _ in range(size // len(block)):
                await call.send(block)
            await call.send_eof()
            results.append(await wait_result(call))

    async with lab.connect() as client, client.session("lab-pi") as agent:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(sink, agent)
    assert results == [size] * 8
