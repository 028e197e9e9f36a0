"""The client library, blocking: for scripts, notebooks and pytest.

    from pio_remote.sync import connect

    with connect() as remote, remote.session("lab-pi") as lab:
        with lab.lock("/dev/ttyACM0", ttl=600):
            lab.upload("firmware.elf", "/dev/ttyACM0", skip_unchanged=True)
            with lab.forward_serial("/dev/ttyACM0") as url:
                ser = serial.serial_for_url(url, baudrate=115200)

The trio client runs in one background thread, through anyio's blocking portal: the
caller's thread has no event loop of its own (a notebook's asyncio loop is no
obstacle), and every method may be called from several threads at once. The methods
are AgentSession's (docs/api.md), with the same arguments and exceptions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from pio_remote.client.api import AgentInfo, AgentSession, Client
from pio_remote.client.boards import Lease, Port, PowerAction, UploadResult
from pio_remote.client.monitor.remote import Item, Monitor
from pio_remote.client.reports import SuiteReport
from pio_remote.wire import serial_events as ev

T = TypeVar("T")


class Remote:
    """A connection to the relay, served by the portal's thread."""

    def __init__(self, portal: BlockingPortal, client: Client) -> None:
        self._portal = portal
        self.client = client

    @property
    def account(self) -> str:
        return self.client.account

    def agents(self) -> list[AgentInfo]:
        """The online agents this account can reach."""
        return self._portal.call(self.client.list_agents)

    @contextmanager
    def session(self, agent: str) -> Iterator[Session]:
        """An end-to-end session with ``agent`` (``name`` or ``owner/name``)."""
        with self._portal.wrap_async_context_manager(self.client.session(agent)) as sess:
            yield Session(self._portal, sess)


class Session:
    """AgentSession's typed calls, blocking."""

    def __init__(self, portal: BlockingPortal, session: AgentSession) -> None:
        self._portal = portal
        self.session = session
        self.agent_id = session.agent_id

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            return await fn(*args, **kwargs)

        return self._portal.call(run)

    def _wrap(self, cm: Any) -> AbstractContextManager[Any]:
        return self._portal.wrap_async_context_manager(cm)

    def call(self, method: str, **params: Any) -> Any:
        return self._call(self.session.call, method, **params)

    def ports(self) -> list[Port]:
        return self._call(self.session.ports)

    def upload(
        self,
        firmware: str | Path | list[str | Path],
        port: str,
        *,
        skip_unchanged: bool = False,
        output: Callable[[bytes], object] | None = None,
    ) -> UploadResult:
        return self._call(
            self.session.upload, firmware, port, skip_unchanged=skip_unchanged, output=output
        )

    def run_tests(self, firmware: str | Path, port: str, **options: Any) -> list[SuiteReport]:
        return self._call(self.session.run_tests, firmware, port, **options)

    def reset(self, port: str) -> str:
        return self._call(self.session.reset, port)

    def power(self, port: str, action: PowerAction) -> None:
        self._call(self.session.power, port, action)

    def lease(self, port: str, ttl: float, **options: Any) -> Lease:
        return self._call(self.session.lease, port, ttl, **options)

    def unlock(self, port: str, *, force: bool = False) -> str:
        return self._call(self.session.unlock, port, force=force)

    def lock(self, port: str, **options: Any) -> AbstractContextManager[Lease]:
        """``with session.lock(port, ttl=600, wait=30) as lease:``"""
        return self._wrap(self.session.lock(port, **options))

    def forward_serial(
        self,
        port: str,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        settings: ev.SerialSettings | None = None,
        tap: Callable[[bytes], object] | None = None,
        raw: bool = False,
    ) -> AbstractContextManager[str]:
        """``with session.forward_serial(port) as url:`` an ``rfc2217://`` URL."""
        return self._wrap(self.session.forward_serial(port, listen, settings, tap, raw))

    def forward_tcp(
        self, dest: str, listen: tuple[str, int] = ("127.0.0.1", 0)
    ) -> AbstractContextManager[tuple[str, int]]:
        return self._wrap(self.session.forward_tcp(dest, listen))

    @contextmanager
    def monitor(
        self, port: str, settings: ev.SerialSettings | None = None
    ) -> Iterator[SyncMonitor]:
        with self._wrap(self.session.monitor(port, settings)) as mon:
            yield SyncMonitor(self._portal, mon)


class SyncMonitor:
    """A live monitor: ``receive()`` blocks for the next bytes or notice."""

    def __init__(self, portal: BlockingPortal, monitor: Monitor) -> None:
        self._portal = portal
        self.monitor = monitor

    def receive(self) -> Item | None:
        return self._portal.call(self.monitor.receive)

    def send(self, data: bytes) -> None:
        self._portal.call(self.monitor.send, data)


@contextmanager
def connect(
    relay: str | None = None, token: str | None = None, home_path: Path | None = None
) -> Iterator[Remote]:
    """Start the portal's thread and connect; both end with the block.

    Arguments as ``Client.connect``: else PIO_REMOTE_RELAY / PIO_REMOTE_AUTH_TOKEN, else
    what ``pio-remote account login`` stored.
    """
    with start_blocking_portal(backend="trio", name="pio-remote") as portal:
        with portal.wrap_async_context_manager(Client.connect(relay, token, home_path)) as client:
            yield Remote(portal, client)
