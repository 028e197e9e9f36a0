"""pytest plugin: boards on remote agents as fixtures (docs/pytest.md).

Registered through the ``pytest11`` entry point and inactive until an agent or a port
is given (``--pio-remote-agent`` / ``--pio-remote-port`` or their ini keys): until then
it adds options and nothing else, and imports no trio. Once active, the session leases
its boards (with a TTL, so a killed runner's lease ends with it), flashes the firmware
once unless a board has it, and forwards each board's serial port in-process. With
pytest-embedded's serial service it supplies ``--port`` (N URLs joined by ``|``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pio_remote.pytest_hil.farm import Farm, RemoteBoard, Wanted

# (name, help, ini type, action); each option's ini key has the same name.
OPTIONS = (
    ("pio-remote-agent", "agent to take boards from (repeatable; default: all online)", "args"),
    ("pio-remote-port", "PORT or GLOB of the boards to use (repeatable)", "args"),
    ("pio-remote-count", "number of boards (default 1; pytest-embedded's --count too)", "string"),
    ("pio-remote-firmware", "image to flash once per board (skipped if already there)", "string"),
    ("pio-remote-lease-ttl", "seconds the session's leases last (default 1800)", "string"),
    ("pio-remote-wait", "seconds to wait for boards others hold (default 0)", "string"),
)
FARM_KEY = pytest.StashKey["Farm | None"]()
ERROR_KEY = pytest.StashKey[str]()
WANTED_KEY = pytest.StashKey["Wanted | None"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pio-remote", "boards on pio-remote agents")
    for name, text, kind in OPTIONS:
        dest = name.replace("-", "_")
        if kind == "args":
            group.addoption(f"--{name}", action="append", dest=dest, metavar="VALUE", help=text)
        else:
            group.addoption(f"--{name}", dest=dest, metavar="VALUE", help=text)
        parser.addini(name, text, type="args" if kind == "args" else "string")


def _value(config: pytest.Config, name: str) -> Any:
    given = config.getoption(name.replace("-", "_"))
    return given if given else config.getini(name)


def _number(config: pytest.Config, name: str, default: float) -> float:
    text = _value(config, name)
    try:
        value = float(text) if text not in (None, "") else default
    except ValueError:
        raise pytest.UsageError(f"--{name}: {text!r} is not a number of seconds") from None
    if value < 0:
        raise pytest.UsageError(f"--{name}: give a number >= 0, not {text!r}")
    return value


def wanted(config: pytest.Config) -> Wanted | None:
    """What the options ask for; None while the plugin is not configured."""
    from pio_remote.pytest_hil.farm import Wanted

    agents = list(_value(config, "pio-remote-agent"))
    ports = list(_value(config, "pio-remote-port"))
    if not agents and not ports:
        return None
    count = int(_number(config, "pio-remote-count", 1))
    count = max(count, _embedded_count(config))
    if count < 1:
        raise pytest.UsageError("--pio-remote-count: give at least 1")
    firmware = _value(config, "pio-remote-firmware") or None
    if firmware is not None:
        path = Path(firmware)
        if not path.is_absolute():
            path = Path(config.invocation_params.dir, path)
        if not path.is_file():
            raise pytest.UsageError(
                f"--pio-remote-firmware: {path} does not exist: build it first, or fix the path"
            )
        firmware = path
    services = _embedded_services(config)
    return Wanted(
        agents,
        ports or ["*"],
        count,
        firmware,
        _number(config, "pio-remote-lease-ttl", 1800.0),
        _number(config, "pio-remote-wait", 0.0),
        int(_embedded_option(config, "baud") or 115200),
        # pytest-embedded reopens the port for every test: a socket:// URL opens and
        # closes at once, where pyserial's RFC 2217 client takes 0.65 s. esptool (the
        # esp and idf services) needs RFC 2217 for its reset lines.
        raw=services == {"serial"},
    )


def _embedded_count(config: pytest.Config) -> int:
    """pytest-embedded's --count when its serial service runs, else 0."""
    if not _embedded_serial(config):
        return 0
    try:
        return int(_embedded_option(config, "count") or 1)
    except (ValueError, TypeError):
        return 1


def _embedded_option(config: pytest.Config, name: str) -> Any:
    try:
        return config.getoption(name)
    except ValueError:  # pytest-embedded is not installed
        return None


def _embedded_services(config: pytest.Config) -> set[str]:
    services = _embedded_option(config, "embedded_services") or ""
    return {s.strip() for s in str(services).split(",") if s.strip()}


def _embedded_serial(config: pytest.Config) -> bool:
    return bool(_embedded_services(config) & {"serial", "esp", "idf"})


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FARM_KEY] = None
    config.stash[ERROR_KEY] = ""
    config.stash[WANTED_KEY] = wanted(config)  # usage errors now, before any test runs


def pytest_unconfigure(config: pytest.Config) -> None:
    farm = config.stash.get(FARM_KEY, None)
    if farm is not None:
        config.stash[FARM_KEY] = None
        farm.close()


def _farm(config: pytest.Config) -> Farm:
    """The session's boards, taken on first use; a failure fails every test that asks."""
    from pio_remote.pytest_hil.farm import Farm, FarmError

    farm = config.stash[FARM_KEY]
    if farm is not None:
        return farm
    if config.stash[ERROR_KEY]:
        pytest.fail(config.stash[ERROR_KEY], pytrace=False)
    want = config.stash[WANTED_KEY]
    if want is None:
        pytest.fail(
            "pio-remote: no boards configured: give --pio-remote-port PORT (and "
            "--pio-remote-agent AGENT), or the ini keys of the same names",
            pytrace=False,
        )
    try:
        farm = Farm(want).open()
    except FarmError as exc:
        config.stash[ERROR_KEY] = str(exc)
        pytest.fail(str(exc), pytrace=False)
    config.stash[FARM_KEY] = farm
    return farm


@pytest.fixture(scope="session")
def remote_boards(pytestconfig: pytest.Config) -> list[RemoteBoard]:
    """Every board of the session (``--pio-remote-count``), across agents."""
    return _farm(pytestconfig).boards


@pytest.fixture(scope="session")
def remote_board(remote_boards: list[RemoteBoard]) -> RemoteBoard:
    """The session's first board."""
    return remote_boards[0]


@pytest.fixture(scope="session", autouse=True)
def _pio_remote_embedded_port(pytestconfig: pytest.Config) -> Iterator[None]:
    """With pytest-embedded's serial service, its --port is the boards' URLs."""
    if pytestconfig.stash[WANTED_KEY] is not None and _embedded_serial(pytestconfig):
        farm = _farm(pytestconfig)
        pytestconfig.option.port = "|".join(b.url for b in farm.boards)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    farm = item.config.stash.get(FARM_KEY, None)
    if farm is not None and farm.boards:
        props = dict(item.user_properties)
        if "pio_remote.agent" not in props:
            boards = farm.boards
            item.user_properties += [
                ("pio_remote.agent", "|".join(b.agent for b in boards)),
                ("pio_remote.port", "|".join(b.port for b in boards)),
                ("pio_remote.firmware_sha256", "|".join(b.firmware_sha256 or "" for b in boards)),
            ]
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if farm is not None and report.failed and call.when == "call":
        for board in farm.boards:
            text = board.tail().decode(errors="replace")
            report.sections.append((f"pio-remote serial {board.agent}:{board.port}", text))
