"""Typed calls on one agent's boards, so scripts need no method names or raw JSON.

    async with client.session("lab-pi") as lab:
        async with lab.lock("/dev/ttyACM0", ttl=600) as lease:
            await lab.upload("firmware.elf", "/dev/ttyACM0")
            async with lab.forward_serial("/dev/ttyACM0") as url:  # rfc2217://127.0.0.1:N
                ...
            await lab.power("/dev/ttyACM0", "cycle")

``AgentSession`` inherits these. Every failure is a ``RemoteError`` subclass carrying
the agent's code (api.py). The modules they wrap import api.py, so they are imported
inside the methods.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import trio

from pio_remote.wire import serial_events as ev

if TYPE_CHECKING:
    from pio_remote.client.api import AgentSession
    from pio_remote.client.monitor.remote import Monitor
    from pio_remote.client.reports import SuiteReport
    from pio_remote.net.channel import Call

PowerAction = Literal["on", "off", "cycle"]
# Output of a failed upload shown in the error: its last lines.
UPLOAD_TAIL = 400


@dataclass(frozen=True)
class Port:
    """One serial port as ``device list`` shows it, with the agent's extra keys."""

    port: str
    description: str = ""
    hwid: str = ""
    lease: dict[str, Any] | None = None  # {holder, until, note} while someone holds it
    power: bool = False  # the owner configured [[power]] for it
    flashed_sha256: str | None = None  # the last image this agent flashed on it

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> Port:
        lease = item.get("lease")
        sha = item.get("flashed_sha256")
        return cls(
            str(item.get("port", "")),
            str(item.get("description", "")),
            str(item.get("hwid", "")),
            lease if isinstance(lease, dict) else None,
            item.get("power") is True,
            sha if isinstance(sha, str) else None,
        )


@dataclass(frozen=True)
class Lease:
    """A device lease: ``id`` is what ``PIO_REMOTE_LEASE`` names."""

    id: str
    port: str
    until: float
    holder: str

    @classmethod
    def from_json(cls, value: dict[str, Any], port: str) -> Lease:
        return cls(
            str(value["lease"]),
            str(value.get("port") or port),
            float(value["until"]),
            str(value.get("holder", "")),
        )


@dataclass(frozen=True)
class UploadResult:
    """What an upload did; ``skipped`` when the board already had the image."""

    port: str
    sha256: str
    uploader: str = ""
    skipped: bool = False
    output: bytes = b""


class BoardCalls:
    """The typed calls; mixed into ``AgentSession``."""

    async def ports(self: AgentSession) -> list[Port]:
        """The agent's serial ports, with leases, power control and flashed images."""
        return [Port.from_json(d) for d in await self.call("device.list") if isinstance(d, dict)]

    async def upload(
        self: AgentSession,
        firmware: str | Path | list[str | Path],
        port: str,
        *,
        skip_unchanged: bool = False,
        output: Callable[[bytes], object] | None = None,
    ) -> UploadResult:
        """Flash ``firmware`` (the first file is $SOURCE) with the agent's uploader.

        ``skip_unchanged``: do nothing when the agent last flashed this very image
        there. A failing uploader raises ``CommandFailedError`` with its last line.
        """
        from pio_remote.client import upload
        from pio_remote.client.api import RemoteError

        paths = [Path(p) for p in (firmware if isinstance(firmware, list) else [firmware])]
        async with upload.Hashes(paths) as hashes:
            files = await hashes.get(paths, self)
        sha = files[0][1].sha256
        if skip_unchanged and any(
            p.port == port and p.flashed_sha256 == sha for p in await self.ports()
        ):
            return UploadResult(port, sha, skipped=True)
        out = bytearray()

        def keep(data: bytes) -> None:
            out.extend(data)
            if output is not None:
                output(data)

        _, result = await upload.deploy(self, files, output=keep, port=port)
        if result.exit_code != 0:
            tail = out.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise RemoteError.from_code(
                "upload_failed",
                f"upload to {port} on agent '{self.agent_id}' failed (exit code "
                f"{result.exit_code}, {result.uploader}): {tail[0][:UPLOAD_TAIL]}",
            )
        return UploadResult(port, sha, result.uploader, output=bytes(out))

    async def run_tests(
        self: AgentSession,
        firmware: str | Path,
        port: str,
        *,
        name: str = "firmware",
        timeout: float = 120.0,
        wait: float = 0.0,
    ) -> list[SuiteReport]:
        """Flash a Unity test image on ``port`` (or every board a glob matches) and read
        its results: the report objects ``pio-remote test`` writes."""
        from pio_remote.client import farm, upload

        suite = farm.Suite("remote", name, [Path(firmware)], project_env=False)
        boards = await farm.find_boards(self, self.agent_id, port)
        async with upload.Hashes(suite.files) as hashes:
            files = await farm.stage_suite(self, suite, hashes)
        params = farm.upload_params(suite, files)
        options = farm.RunOptions(timeout=timeout, wait=wait, farm=len(boards) > 1)
        reports: list[SuiteReport] = [None] * len(boards)  # type: ignore[list-item]

        async def one(i: int) -> None:
            reports[i] = await farm.run_on_board(self, boards[i], suite, params, options)

        async with trio.open_nursery() as nursery:
            for i in range(len(boards)):
                nursery.start_soon(one, i)
        return reports

    @asynccontextmanager
    async def monitor(
        self: AgentSession, port: str, settings: ev.SerialSettings | None = None
    ) -> AsyncIterator[Monitor]:
        """The port's serial monitor on this session: ``receive()`` yields bytes and
        notices, ``send(data)`` writes; leaving the block closes the port."""
        from pio_remote.client.monitor.remote import open_monitor

        async with open_monitor(self.agent_id, port, settings, session=self) as mon:
            yield mon

    async def lease(
        self: AgentSession,
        port: str,
        ttl: float,
        *,
        wait: float = 0.0,
        note: str = "",
        on_waiting: Callable[[str], object] | None = None,
    ) -> Lease:
        """A detached lease for ``ttl`` seconds: it outlives this process (a killed one
        too) until the TTL or ``unlock``. ``on_waiting`` hears whom a ``wait`` waits for."""
        from pio_remote.client.api import wait_result

        params = {"port": port, "ttl": ttl, "wait": wait, "note": note}
        async with self.open_call("device.lock", **params) as call:
            await _granted(call, on_waiting)
            return Lease.from_json(await wait_result(call), port)

    async def unlock(self: AgentSession, port: str, *, force: bool = False) -> str:
        """Release this client's lease on ``port`` (``force``: anyone's, owner only);
        returns the lease id released."""
        params: dict[str, Any] = {"port": port}
        if force:  # only sent when asked: older agents know no `force`
            params["force"] = True
        return str((await self.call("device.unlock", **params))["released"])

    @asynccontextmanager
    async def lock(
        self: AgentSession,
        port: str,
        *,
        ttl: float | None = None,
        wait: float = 0.0,
        note: str = "",
        on_waiting: Callable[[str], object] | None = None,
    ) -> AsyncIterator[Lease]:
        """Lease ``port`` for the block; this session's calls may use it, others' may not.

        With ``ttl`` the lease outlives a killed process until the TTL and is released
        when the block ends; without, it lasts exactly as long as the block.
        """
        if ttl is not None:
            lease = await self.lease(port, ttl, wait=wait, note=note, on_waiting=on_waiting)
            try:
                yield lease
            finally:
                await self._unlock_quietly(lease.port)
            return
        from pio_remote.client.api import RemoteError, wait_result

        async with self.open_call("device.lock", port=port, wait=wait, note=note) as call:
            item = await _granted(call, on_waiting)
            if item is None:
                await wait_result(call)  # raises the agent's refusal
                raise RemoteError(f"agent '{self.agent_id}' did not grant the lease on {port}")
            error: Exception | None = None
            lease = Lease.from_json(item, port)
            try:
                async with trio.open_nursery() as nursery:
                    # The agent ends the call only when the lease is gone (broken by
                    # the owner): that cancels the block and is raised from it.
                    nursery.start_soon(wait_result, call)
                    try:
                        yield lease
                    except Exception as exc:  # re-raised plain, not inside a group
                        error = exc
                    nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                if error is None:
                    raise _first(group) from None
            finally:
                # Ending the call drops the lease only once the agent has seen the
                # cancel: release it first, so that it is gone when the block is.
                await self._unlock_quietly(lease.port)
            if error is not None:
                raise error

    async def _unlock_quietly(self: AgentSession, port: str) -> None:
        """Release a detached lease on the way out; one the session cannot reach ends with
        its TTL."""
        from pio_remote.client.api import RemoteError
        from pio_remote.net.channel import ChannelClosed

        if self.error is not None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            try:
                await self.unlock(port)
            except (RemoteError, ChannelClosed):
                pass

    @asynccontextmanager
    async def forward_serial(
        self: AgentSession,
        port: str,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        settings: ev.SerialSettings | None = None,
        tap: Callable[[bytes], object] | None = None,
        raw: bool = False,
    ) -> AsyncIterator[str]:
        """Serve ``port`` as a local RFC 2217 server for the block; yields its
        ``rfc2217://HOST:PORT`` URL (pyserial's ``serial_for_url`` opens it).
        ``tap`` hears every byte the board sends to a tool. ``raw``: plain bytes at
        ``settings`` instead, a ``socket://`` URL that opens and closes at once."""
        from pio_remote.client.api import UnknownPortError
        from pio_remote.client.forward_serial import Forwarder

        names = [p.port for p in await self.ports()]
        if port not in names:
            raise UnknownPortError(
                f"agent '{self.agent_id}' offers no port {port!r}; its ports: "
                f"{', '.join(names) or 'none'}"
            )
        forwarder = Forwarder([self.agent_id], port, settings or ev.SerialSettings(), {})
        forwarder.attach(self)
        forwarder.tap, forwarder.raw = tap, raw
        async with _serving(forwarder.handle, listen) as (host, number):
            yield f"{'socket' if raw else 'rfc2217'}://{host}:{number}"

    @asynccontextmanager
    async def forward_tcp(
        self: AgentSession, dest: str, listen: tuple[str, int] = ("127.0.0.1", 0)
    ) -> AsyncIterator[tuple[str, int]]:
        """Carry local connections to ``dest`` (``host:port``, an endpoint the owner's
        ``[[forward]]`` allows) on the agent's side; yields the local address."""
        from pio_remote.client.forward_tcp import TcpForwarder

        forwarder = TcpForwarder(_SessionLine(self), dest)
        await forwarder.check()
        async with _serving(forwarder.handle, listen) as address:
            yield address

    async def reset(self: AgentSession, port: str) -> str:
        """Reset the board (DTR/RTS as the owner's ``[[reset]]`` says); returns the style."""
        return str((await self.call("device.reset", port=port))["style"])

    async def power(self: AgentSession, port: str, action: PowerAction) -> None:
        """Switch the board ``on``, ``off``, or ``cycle`` it, with the owner's commands."""
        await self.call("device.power", port=port, action=action)


async def _granted(call: Call, on_waiting: Callable[[str], object] | None) -> dict[str, Any] | None:
    """A device.lock call's lease event, or None once the call ended without one;
    meanwhile its ``waiting`` notices go to ``on_waiting``."""
    while call.result is None:
        item = await call.receive()
        if isinstance(item, dict) and "waiting" in item and on_waiting is not None:
            on_waiting(str(item["waiting"]))
        elif isinstance(item, dict) and "lease" in item:
            return item
    return None


def _first(group: BaseExceptionGroup) -> BaseException:
    """The first error in a group that is not a cancellation."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, trio.Cancelled):
            return exc
    return group


class _SessionLine:
    """forward_tcp's AgentLine for a session the caller already holds."""

    def __init__(self, session: AgentSession) -> None:
        self._session = session

    async def session(self) -> AgentSession:
        return self._session


@asynccontextmanager
async def _serving(
    handle: Callable[[trio.SocketStream], Any], listen: tuple[str, int]
) -> AsyncIterator[tuple[str, int]]:
    """Accept on ``listen`` for the block; the body's error comes out plain."""
    listeners = await trio.open_tcp_listeners(listen[1], host=listen[0])
    address = listeners[0].socket.getsockname()
    error: Exception | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        try:
            yield str(address[0]), int(address[1])
        except Exception as exc:  # re-raised plain, not inside an ExceptionGroup
            error = exc
        nursery.cancel_scope.cancel()
    if error is not None:
        raise error
