"""A monitor through outages, end to end: no serial byte lost, none repeated, no reopen.

Real relay, agent and `device monitor` processes; the board is ``ptydev.py
counter`` (a numbered line every 10 ms, ``open N`` on each open of its port, so
a reopen, which resets many boards, shows). Paths are cut with a proxy that
drops its connections and refuses new ones until restored (wsproxy.py).
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from conftest import PY, Env, Proc, World
from monitorkit import LAB_GRACE, PTYDEV, MonitorProc
from numbered import Tally, tally
from wsproxy import Proxy

from pio_remote.client.api import Client, RemoteError
from pio_remote.client.monitor.remote import open_monitor

# A restored path must bring the monitor back within about a second (the capped
# backoff); the bound leaves room for a loaded 2-core test machine.
BACK_WITHIN_S = 5.0


@dataclass
class Rig:
    world: World
    lab: Env  # the agent's machine; the monitor runs with its identity
    agent_env: Env
    agent: Proc
    board: Path
    client_proxy: Proxy
    agent_proxy: Proxy

    def start_agent(self) -> Proc:
        self.agent = self.world.start_agent(
            self.agent_env, "lab-pi", "--port-glob", str(self.board)
        )
        return self.agent

    def monitor(self) -> MonitorProc:
        env = Env(self.lab.home, {**self.lab.extra, "PIO_REMOTE_RELAY": self.client_proxy.url})
        mon = MonitorProc(env, ["-a", "lab-pi", "device", "monitor", "-p", str(self.board)])
        self.world.procs.append(mon)
        return mon


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    world = World(tmp_path)
    proxies: list[Proxy] = []
    try:
        world.relay.start()
        lab = world.machine("lab", "alice")
        (lab.home / "agent.toml").write_text(f"monitor_grace_seconds = {LAB_GRACE}\n")
        proxies += [Proxy(world.relay.port), Proxy(world.relay.port)]
        client_proxy, agent_proxy = proxies
        agent_env = Env(lab.home, {**lab.extra, "PIO_REMOTE_RELAY": agent_proxy.url})
        board = tmp_path / "board"
        proc = Proc([PY, PTYDEV, "counter", str(board)], lab.env)
        world.procs.append(proc)
        proc.wait_for("ptydev")
        r = Rig(world, lab, agent_env, None, board, client_proxy, agent_proxy)  # type: ignore[arg-type]
        r.start_agent()
        yield r
    finally:
        world.close()
        for proxy in proxies:
            proxy.close()


def seen(mon: MonitorProc) -> Tally:
    return tally(bytes(mon.out.data))


def wait_lines(mon: MonitorProc, more: int, timeout: float = 10.0) -> None:
    """Until ``more`` numbered lines past the newest one now have arrived."""
    numbers = seen(mon).numbers
    target = (numbers[-1] if numbers else 0) + more
    deadline = time.monotonic() + timeout
    while not (numbers := seen(mon).numbers) or numbers[-1] < target:
        assert time.monotonic() < deadline, f"stuck at line {numbers[-1:]}: {mon.stderr_tail()}"
        mon.out.wait_for_bytes(b"%08d\n" % target, 0.2)


def outage_and_back(rig: Rig, cut, restore) -> tuple[MonitorProc, float]:
    """Monitor, cut, type into the gap, restore; returns the monitor and the time back."""
    mon = rig.monitor()
    mon.wait_for(b"open 1\n")
    wait_lines(mon, 20)
    cut()
    mon.wait_for(rb"connection lost", err=True)
    mon.write(b"during\n")  # typed into the gap: must never reach the board
    time.sleep(0.2)
    restore()
    restored = time.monotonic()
    mon.wait_for(rb"reconnected to agent lab-pi", err=True, timeout=20)
    back = time.monotonic() - restored
    wait_lines(mon, 30)
    mon.write(b"after\n")
    mon.wait_for(b"rx:after\n")
    wait_lines(mon, 5)
    return mon, back


def assert_continuous(mon: MonitorProc) -> None:
    t = seen(mon)
    assert (t.lost, t.duplicated, t.reordered, t.partial) == (0, 0, 0, 0), t
    assert t.opens == 1, "the port was reopened (a reset on many boards)"
    assert t.received == [b"after"], t.received  # "during" was dropped, not replayed
    err = mon.stderr_text()
    assert "typed while disconnected were dropped" in err, err
    assert "Traceback" not in err


def test_relay_restart(rig: Rig):
    port = rig.world.relay.port
    mon, back = outage_and_back(rig, rig.world.relay.stop, lambda: rig.world.relay.start(port=port))
    assert_continuous(mon)
    assert back < BACK_WITHIN_S


def test_relay_sigkill(rig: Rig):
    port = rig.world.relay.port
    relay = rig.world.relay

    def kill() -> None:
        assert relay.proc is not None
        relay.proc.stop(signal.SIGKILL)

    mon, back = outage_and_back(rig, kill, lambda: relay.start(port=port))
    assert_continuous(mon)
    assert back < BACK_WITHIN_S


def test_client_path_outage(rig: Rig):
    mon, back = outage_and_back(rig, rig.client_proxy.cut, rig.client_proxy.restore)
    assert_continuous(mon)
    assert back < BACK_WITHIN_S


def test_agent_path_outage(rig: Rig):
    mon, back = outage_and_back(rig, rig.agent_proxy.cut, rig.agent_proxy.restore)
    assert_continuous(mon)
    assert back < BACK_WITHIN_S


def test_agent_restart_reports_the_loss(rig: Rig):
    """The agent process is gone, and its ring with it: a new stream, and one line saying so."""
    mon = rig.monitor()
    mon.wait_for(b"open 1\n")
    wait_lines(mon, 20)
    rig.agent.stop()
    mon.wait_for(rb"connection lost", err=True)
    rig.start_agent()
    mon.wait_for(rb"no longer kept this monitor", err=True, timeout=20)
    mon.wait_for(b"open 2\n")
    wait_lines(mon, 20)
    t = seen(mon)
    assert t.lost > 0 and (t.duplicated, t.reordered) == (0, 0), t
    assert mon.stderr_text().count("what the board printed meanwhile is lost") == 1


def test_resume_after_the_grace_period_is_a_new_session_with_the_loss_reported(rig: Rig):
    mon = rig.monitor()
    mon.wait_for(b"open 1\n")
    wait_lines(mon, 20)
    rig.client_proxy.cut()
    mon.wait_for(rb"connection lost", err=True)
    time.sleep(LAB_GRACE + 3)  # the outage itself: longer than the agent keeps the port
    rig.client_proxy.restore()
    mon.wait_for(rb"no longer kept this monitor", err=True, timeout=20)
    mon.wait_for(b"open 2\n")  # a clean new open, not a resume
    wait_lines(mon, 10)
    t = seen(mon)
    assert t.lost >= LAB_GRACE * 50 and (t.duplicated, t.reordered) == (0, 0), t


async def test_a_resume_token_is_refused_to_another_client_key(rig: Rig):
    """The attacker: another key paired with the same agent, holding the victim's token
    and offset, tries to take the kept monitor (and its port) while the victim is away."""
    rogue = rig.world.machine("rogue", "alice")
    rig.world.pair(rig.lab, rogue, "lab-pi")
    victim_args = {"relay": rig.client_proxy.url, "home_path": rig.lab.home}
    victim_args["token"] = rig.lab.extra["PIO_REMOTE_AUTH_TOKEN"]
    data = b""
    with trio.fail_after(60):
        async with open_monitor("lab-pi", str(rig.board), **victim_args) as mon:  # type: ignore[arg-type]
            while data.count(b"\n") < 20:
                item = await mon.receive()
                data += item if isinstance(item, bytes) else b""
            token, offset = mon._token, mon.offset  # what a thief could have copied
            assert token
            rig.client_proxy.cut()
            while mon.connected:
                item = await mon.receive()
                data += item if isinstance(item, bytes) else b""
            async with (
                Client.connect(home_path=rogue.home, **_relay(rig, rogue)) as client,
                client.session("lab-pi") as session,
            ):
                resume = {"token": token, "offset": offset}
                with pytest.raises(RemoteError) as stolen:
                    await session.call("monitor.open", port=str(rig.board), resume=resume)
                assert stolen.value.code == "resume_refused"
                with pytest.raises(RemoteError) as plain:
                    await session.call("monitor.open", port=str(rig.board))
                assert plain.value.code == "port_busy"  # still the victim's
            rig.client_proxy.restore()
            until = tally(data).numbers[-1] + 200  # well past the gap
            while not tally(data).numbers or tally(data).numbers[-1] < until:
                item = await mon.receive()
                data += item if isinstance(item, bytes) else b""
    t = tally(data)
    assert (t.lost, t.duplicated, t.reordered, t.opens) == (0, 0, 0, 1), t


def _relay(rig: Rig, env: Env) -> dict[str, str]:
    return {"relay": rig.world.relay.url, "token": env.extra["PIO_REMOTE_AUTH_TOKEN"]}


def test_a_path_that_drops_mid_upgrade_says_the_connection_was_lost(rig: Rig):
    rig.client_proxy.cut()
    env = Env(rig.lab.home, {**rig.lab.extra, "PIO_REMOTE_RELAY": rig.client_proxy.url})
    result = env.cli("agent", "list", check=False)
    assert result.returncode != 0
    assert "lost the connection to relay" in result.stderr, result.stderr
    assert "wss://" not in result.stderr and "Traceback" not in result.stderr


def test_ring_overflow_is_reported_exactly(rig: Rig):
    """Away longer than the ring holds: the newest bytes come, and the count of the rest."""
    rig.agent.stop()
    (rig.lab.home / "agent.toml").write_text(
        f"monitor_grace_seconds = {LAB_GRACE}\nmonitor_ring_bytes = 1024\n"
    )
    rig.start_agent()
    mon = rig.monitor()
    mon.wait_for(b"open 1\n")
    wait_lines(mon, 20)
    rig.client_proxy.cut()
    mon.wait_for(rb"connection lost", err=True)
    time.sleep(2.5)  # about 2,250 bytes of lines: more than the ring's 1,024
    rig.client_proxy.restore()
    mon.wait_for(rb"reconnected to agent lab-pi", err=True, timeout=20)
    wait_lines(mon, 20)
    mon.wait_for(rb"output were lost while disconnected", err=True)
    err = mon.stderr_text()
    # The gap while disconnected, plus any the ring overran while the client caught up
    # (the board goes on printing meanwhile): each is a line with its count.
    missing = sum(int(n) for n in re.findall(rb"(\d+) byte\(s\) of output were lost", err.encode()))
    data = bytes(mon.out.data)
    first, last = tally(data).numbers[0], tally(data).numbers[-1]  # numbering predates the open
    upto = data[: data.index(b"%08d\n" % last) + 9]
    # Exactly: what arrived plus what was reported missing is the whole stream.
    assert len(upto) + missing == len(b"open 1\n") + 9 * (last - first + 1)
    assert 1024 < missing < 9 * 400 and tally(data).opens == 1
