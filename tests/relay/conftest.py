"""Fixtures that start real relay processes; each one stops what it started."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # relay_testkit, whatever the import mode

from relay_testkit import RelayProcess  # noqa: E402

from pio_remote.relay.accounts import Accounts

# Accounts of the shared relay. Tests that revoke or remove create their own.
USERS = ("alice", "bob", "carol", "dave")


@pytest.fixture(scope="session")
def relay_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A data dir with the USERS accounts; returns (dir, {name: token})."""
    data_dir = tmp_path_factory.mktemp("relay") / "data"
    with Accounts(data_dir) as accounts:
        tokens = {name: accounts.add(name) for name in USERS}
    return data_dir, tokens


@pytest.fixture(scope="session")
def relay(relay_data: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory):
    """One relay subprocess shared by the tests that do not stop or reconfigure it."""
    data_dir, _ = relay_data
    proc = RelayProcess(data_dir, tmp_path_factory.mktemp("relay-log") / "relay.log")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def tokens(relay_data: tuple[Path, dict[str, str]]) -> dict[str, str]:
    return relay_data[1]


@pytest.fixture
def start_relay(tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    """Start extra relays (own data dir unless given); all are stopped afterwards."""
    started: list[RelayProcess] = []

    def start(data_dir: Path | None = None, extra: Sequence[str] = ()) -> RelayProcess:
        n = len(started)
        proc = RelayProcess(data_dir or tmp_path / f"data{n}", tmp_path / f"relay{n}.log", extra)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()
