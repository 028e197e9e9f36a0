"""Where stdout and stderr are one stream (a terminal, journald, `2>&1`), the relay and
the agent say each event once: the ready line for scripts is not repeated by the log."""

from __future__ import annotations

from conftest import PY, World
from proctools import Proc


def _lines(proc: Proc, pattern: str) -> list[str]:
    proc.wait_for(pattern)
    proc.stop()
    return [line for line in proc.lines if pattern in line]


def test_relay_and_agent_say_they_are_ready_once_on_one_stream(world: World):
    merged = Proc(
        [PY, "-m", "pio_remote", "relay", "serve", "--bind", "127.0.0.1:0", "--data-dir",
         str(world.tmp / "relay2")],
        world.machine("relay2", "alice").env,
        merge_stderr=True,
    )  # fmt: skip
    world.procs.append(merged)
    said = _lines(merged, "relay listening on ")
    assert len(said) == 1 and "relay listening on ws://127.0.0.1:" in said[0], merged.lines

    lab = world.machine("lab", "alice")
    agent = Proc(
        [PY, "-m", "pio_remote", "agent", "start", "-n", "lab"], lab.env, merge_stderr=True
    )
    world.procs.append(agent)
    said = _lines(agent, "lab online")
    assert len(said) == 1, agent.lines
    assert "agent alice/lab online via ws://127.0.0.1:" in said[0]
