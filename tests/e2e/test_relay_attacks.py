"""Attacks on the relay from one address must not lock out everyone else.

Real relay, CLI and attacker processes. The attacker (attacker.py) connects from
127.0.0.2, the victims from 127.0.0.1, so the relay's per-IP limits tell them
apart as they would two machines. Floods are bounded in count and time.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from conftest import PY, World
from proctools import Proc

HERE = Path(__file__).resolve().parent
ATTACKER_IP = "127.0.0.2"


def attacker(world: World, *args: object) -> Proc:
    proc = Proc([PY, str(HERE / "attacker.py"), *map(str, args)], nofile=8192)
    world.procs.append(proc)
    proc.wait_for("attacking")
    return proc


def counts(proc: Proc) -> dict[str, int]:
    result = proc.finished(60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_a_silent_connect_flood_from_one_address_locks_out_no_one_else(world: World):
    """Attacker opens 500 TCP connections a second from one address and never
    speaks → another address's `agent list` must not wait behind them."""
    world.relay.stop()
    # An accept ceiling the flood alone could fill (the default is 200/s): one
    # address must still get no more than its own share of it.
    world.relay.start(extra=("--accept-rate", "50", "--accept-burst", "50"))
    desk = world.machine("desk", "alice")
    flood = attacker(world, "silent", ATTACKER_IP, "127.0.0.1", world.relay.port, 500, 5)
    flood.wait_for("halfway", 10)
    start = time.monotonic()
    result = desk.cli("agent", "list", check=False, timeout=30)
    took = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert "No agents online." in result.stdout
    assert took < 8, took
    assert counts(flood)["connects"] >= 2000  # the flood really ran meanwhile


def test_token_guessing_is_throttled_and_summarised(world: World):
    """Attacker tries 2,000 made-up tokens from one address → at most
    --auth-failures-per-ip of them are looked up, the relay logs a summary instead
    of a line each, and a good token from another address still connects."""
    desk = world.machine("desk", "alice")
    guess = attacker(world, "tokens", ATTACKER_IP, "127.0.0.1", world.relay.port, 2000, 5)
    listed = desk.cli("agent", "list", check=False, timeout=30)
    assert listed.returncode == 0, listed.stderr
    answers = counts(guess)
    assert sum(answers.values()) >= 500, answers  # it did try, many times
    assert answers.get("401", 0) <= 20, answers  # relay serve --auth-failures-per-ip
    assert "101" not in answers, answers

    relay = world.relay.proc
    assert relay is not None
    relay.wait_for_bytes(rb"refused \d+ bad or missing tokens", err=True, timeout=20)
    about_attacker = [line for line in relay.stderr_text().splitlines() if ATTACKER_IP in line]
    assert 1 <= len(about_attacker) <= 3, about_attacker
    summary = about_attacker[0]
    m = re.search(r"127\.0\.0\.2 (\d+) \(\+(\d+) refused unread", summary)
    assert m and int(m.group(1)) == answers.get("401", 0), (summary, answers)
    # Later, the attacker's address is still refused without a lookup...
    again = attacker(world, "tokens", ATTACKER_IP, "127.0.0.1", world.relay.port, 1, 5)
    assert counts(again) in ({"429": 1}, {"closed": 1})
    # ... and the good token keeps working from another address.
    assert desk.cli("agent", "list", check=False).returncode == 0
