"""The client side of uploads, as an async API (the `run` command is a thin layer on it).

    async with client.session("lab-pi") as agent:
        files = [(path, transfer.hash_file(path))]
        staged = await stage(agent, files)          # sends only what the agent lacks
        result = await flash(agent, port="/dev/ttyACM0", source=path.name,
                             files=[e for _, e in files], output=sys.stdout.buffer.write)
        sys.exit(result.exit_code)

Everything travels inside the end-to-end session; the agent checks each file's
SHA-256 before it keeps it. See docs/upload.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from pio_remote.client.api import AgentSession, RemoteError, wait_result
from pio_remote.home import write_private
from pio_remote.net.channel import Call, ChannelClosed
from pio_remote.project import INI, resolve_sysenv
from pio_remote.wire import transfer
from pio_remote.wire.session import LocalProtocolError

Progress = Callable[[int], None]
# Entries per upload.check: each is ~120 bytes of JSON, and a CALL body is at most 32 KiB.
CHECK_BATCH = 200
# Files sent at once: enough to hide round trips, well under the session's open-call cap.
PUT_CONCURRENCY = 8
# Largest index the agent sends back (a JSON stream, not a single message).
MAX_INDEX_BYTES = 16 * 1024 * 1024


# Files are hashed as soon as the command starts, overlapping the connection, while
# they total at most this (the agent's default max_upload_bytes). A bigger upload
# asks the agent its limit first: a file it would refuse is never hashed.
EAGER_HASH_BYTES = 64 * 1024 * 1024


def check_firmware(path: Path) -> int:
    """The size of a file worth sending, or a RemoteError saying why it is not."""
    try:
        st = path.stat()
    except OSError as exc:
        raise RemoteError(f"cannot read firmware {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise RemoteError(
            f"{path} is not a regular file (a device, pipe or directory): give the firmware "
            "file itself"
        )
    if st.st_size == 0:
        raise RemoteError(f"{path} is empty: nothing to flash (did the build fail?)")
    return st.st_size


async def max_upload_bytes(agent: AgentSession) -> int:
    """The agent's limit (upload.check of no files answers with it)."""
    return int((await agent.call("upload.check", files=[]))["max_upload_bytes"])


class Hashes:
    """SHA-256 of files, computed in a worker thread while the caller does other work.

    async with Hashes(paths) as hashes:     # checks the files, starts hashing
        ... connect, handshake ...
        files = await hashes.get(paths, agent)     # [(path, FileEntry)]

    Empty and non-regular files are refused up front. Files are hashed once they are
    known to be wanted, never skipped: a file the user has just rewritten may keep its
    size and mtime, so no metadata cache decides that it is unchanged.
    """

    def __init__(self, paths: list[Path]):
        self.paths = list(dict.fromkeys(paths))
        self.sizes = {p: check_firmware(p) for p in self.paths}
        self.eager = sum(self.sizes.values()) <= EAGER_HASH_BYTES
        self.done = trio.Event()
        self.entries: dict[Path, transfer.FileEntry] = {}
        self.error: BaseException | None = None
        self._lock = trio.Lock()
        self._nursery_cm = trio.open_nursery()

    async def __aenter__(self) -> Hashes:
        nursery = await self._nursery_cm.__aenter__()
        if self.eager:
            nursery.start_soon(self._run, self.paths)
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._nursery_cm.__aexit__(*exc)

    async def _run(self, paths: list[Path]) -> None:
        async with self._lock:
            try:
                for path in paths:
                    if path not in self.entries:
                        entry = await trio.to_thread.run_sync(transfer.hash_file, path)
                        self.entries[path] = entry
            except OSError as exc:
                self.error = exc
            finally:
                self.done.set()

    async def get(
        self, paths: list[Path], agent: AgentSession | None = None
    ) -> list[tuple[Path, transfer.FileEntry]]:
        """The entries; an upload too big for the agent's limit fails before any hashing."""
        if not self.eager:
            total = sum(self.sizes[p] for p in paths)
            if agent is not None:
                limit = await max_upload_bytes(agent)
                try:
                    transfer.check_size(total, limit, ", ".join(p.name for p in paths))
                except transfer.TransferError as exc:
                    raise RemoteError(str(exc), exc.code) from None
            await self._run(paths)
        await self.done.wait()
        if self.error is not None:
            raise RemoteError(f"cannot read firmware: {self.error}")
        return [(p, self.entries[p]) for p in paths]


@dataclass
class StageResult:
    """What a stage cost: bytes and files sent, and files the agent already had."""

    sent_bytes: int = 0
    sent_files: int = 0
    cached_files: int = 0


@dataclass
class FlashResult:
    """The uploader's exit code, or the blobs the agent still needs (nothing ran then)."""

    exit_code: int
    uploader: str
    events: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


async def stage(
    agent: AgentSession,
    files: list[tuple[Path, transfer.FileEntry]],
    progress: Progress | None = None,
    missing: set[str] | None = None,
    all_sent: trio.Event | None = None,
) -> StageResult:
    """Make every file available on the agent; sizes are checked before anything is sent.

    ``missing``, when the agent already said which blobs it lacks, saves asking.
    Files go ``PUT_CONCURRENCY`` at a time, so many small files (a project sync)
    cost a few round trips, not one each. ``all_sent`` is set once every put
    has sent its last byte, before the agent has confirmed them.
    """
    if missing is None:
        missing = set()
        for i in range(0, len(files), CHECK_BATCH):
            batch = [e.to_json() for _, e in files[i : i + CHECK_BATCH]]
            missing.update((await agent.call("upload.check", files=batch))["missing"])
    result = StageResult()
    todo: dict[str, tuple[Path, transfer.FileEntry]] = {}
    for path, entry in files:
        if entry.sha256 in missing:
            todo.setdefault(entry.sha256, (path, entry))
        else:
            result.cached_files += 1
    limit = trio.Semaphore(PUT_CONCURRENCY)
    unsent = len(todo)

    def sent() -> None:
        nonlocal unsent
        unsent -= 1
        if not unsent and all_sent is not None:
            all_sent.set()

    async def one(path: Path, entry: transfer.FileEntry) -> None:
        async with limit:
            value = await put_file(agent, path, entry, progress, sent)
        result.sent_bytes += int(value["received"])
        result.sent_files += 1

    if not todo and all_sent is not None:
        all_sent.set()
    async with trio.open_nursery() as nursery:
        for path, entry in todo.values():
            nursery.start_soon(one, path, entry)
    return result


async def put_file(
    agent: AgentSession,
    path: Path,
    entry: transfer.FileEntry,
    progress: Progress | None = None,
    sent: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Stream one file; the agent answers only once it checked size and SHA-256.

    ``sent`` is called once the last byte is out (or the agent stopped the put).
    """
    async with agent.open_call("upload.put", **entry.to_json()) as call:
        try:
            with open(path, "rb") as fh:
                while block := fh.read(transfer.READ_BLOCK):
                    await call.send(block)
                    if progress is not None:
                        progress(len(block))
            await call.send_eof()
        except (ChannelClosed, LocalProtocolError):
            # The agent ended the call early (a size or hash error): its RESULT says why.
            if call.channel.error is not None:
                raise
        if sent is not None:
            sent()
        return await wait_result(call)


async def flash(
    agent: AgentSession,
    *,
    output: Callable[[bytes], object],
    port: str = "",
    env: str | None = None,
    source: str = "",
    files: list[transfer.FileEntry] | None = None,
    ini: str | None = None,
    project: str | None = None,
    targets: list[str] | None = None,
    verbose: bool = False,
    silent: bool = False,
    on_event: Callable[[dict[str, Any]], object] | None = None,
) -> FlashResult:
    """Run the uploader on the agent; its output goes to ``output`` as it comes."""
    params: dict[str, Any] = {
        "port": port,
        "env": env,
        "targets": ["upload"] if targets is None else targets,
        "verbose": verbose,
        "silent": silent,
    }
    if project is not None:
        params["project"] = project
    else:
        params.update(source=source, files=[e.to_json() for e in files or []], ini=ini)
    events: list[dict[str, Any]] = []
    async with agent.open_call("upload.flash", **params) as call:
        value = await _pump(call, output, events, on_event)
    if "missing" in value:
        return FlashResult(-1, "", events, [str(m) for m in value["missing"]])
    return FlashResult(int(value["exit_code"]), str(value.get("uploader", "")), events)


async def deploy(
    agent: AgentSession,
    firmware: list[tuple[Path, transfer.FileEntry]],
    ini: tuple[Path, transfer.FileEntry] | None = None,
    *,
    output: Callable[[bytes], object],
    progress: Callable[[int], Progress | None] | None = None,
    **options: Any,
) -> tuple[StageResult, FlashResult]:
    """Flash ``firmware`` (the first file is $SOURCE), sending only what the agent lacks.

    It asks to flash straight away: when everything is cached (the same firmware
    again), that is the only round trip. Otherwise the agent names the missing
    blobs, they are sent, and the flash is asked again right behind them: the
    agent waits for the session's puts to end before it looks in its cache. An
    agent that does not wait answers "missing" again, and is asked once more
    after the puts' results. ``progress(total)`` returns a byte counter for the
    bytes about to be sent.
    """
    files = firmware + ([ini] if ini else [])
    kwargs = dict(
        options,
        output=output,
        source=firmware[0][1].name,
        files=[e for _, e in firmware],
        ini=ini[1].sha256 if ini else None,
    )
    result = await flash(agent, **kwargs)
    if not result.missing:
        return StageResult(cached_files=len(files)), result
    missing = set(result.missing)
    blobs = transfer.unique_blobs(e for _, e in files)
    total = sum(e.size for e in blobs if e.sha256 in missing)
    counter = progress(total) if progress else None
    staged, result = await _stage_then_flash(agent, files, missing, counter, kwargs)
    if result.missing:  # an agent that looked before our puts had ended
        result = await flash(agent, **kwargs)
    if result.missing:
        raise RemoteError(
            f"agent '{agent.agent_id}' lost {len(result.missing)} staged file(s) "
            "from its cache during the upload (it is too small?): run again"
        )
    return staged, result


async def _stage_then_flash(
    agent: AgentSession,
    files: list[tuple[Path, transfer.FileEntry]],
    missing: set[str],
    counter: Progress | None,
    kwargs: dict[str, Any],
) -> tuple[StageResult, FlashResult]:
    """Send the missing files, and the flash right behind their last byte."""
    all_sent = trio.Event()
    flashed: list[FlashResult | Exception] = []

    async def flash_behind_puts() -> None:
        await all_sent.wait()
        try:
            flashed.append(await flash(agent, **kwargs))
        except Exception as exc:  # raised below, plain (not in an ExceptionGroup)
            flashed.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flash_behind_puts)
        try:
            staged = await stage(agent, files, counter, missing, all_sent)
        except Exception as exc:  # a put's error says more than the flash's "missing"
            flashed.insert(0, exc)
            nursery.cancel_scope.cancel()
    result = flashed[0]
    if isinstance(result, Exception):
        raise result
    return staged, result


async def _pump(
    call: Call,
    output: Callable[[bytes], object],
    events: list[dict[str, Any]],
    on_event: Callable[[dict[str, Any]], object] | None,
) -> Any:
    while call.result is None:
        item = await call.receive()
        if isinstance(item, bytes):
            output(item)
        elif isinstance(item, dict):
            events.append(item)
            if on_event is not None:
                on_event(item)
    return await wait_result(call)


def resolved_ini(path: Path, tmp: Path) -> Path:
    """``platformio.ini`` as it may leave this machine: ``${sysenv.X}`` resolved here.

    The agent never reads its own environment for a client's file (project.py), so
    the values come from this client's, as a local `pio run` would take them. The
    file itself when it has none; else a copy in ``tmp`` (mode 0600: it may now hold
    values from the environment).
    """
    text = path.read_text()
    resolved = resolve_sysenv(text, os.environ)
    if resolved == text:
        return path
    out = tmp / INI
    write_private(out, resolved.encode())
    return out


# ---- project sync (-r) ---------------------------------------------------------------


@dataclass
class SyncResult:
    sent_bytes: int
    updated: int
    removed: int
    unchanged: int
    project: str


def project_id(project_dir: Path) -> str:
    """Stable per machine and directory, so the agent keeps one copy per project."""
    key = f"{socket.gethostname()}:{project_dir.resolve()}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


async def sync_project(
    agent: AgentSession,
    project_dir: Path,
    progress: Progress | None = None,
    on_plan: Callable[[transfer.Delta], object] | None = None,
) -> SyncResult:
    """Bring the agent's copy up to date: send only files whose hash changed."""
    pid = project_id(project_dir)
    local = await trio.to_thread.run_sync(transfer.build_index, project_dir)
    if INI not in local:
        raise RemoteError(f"no {INI} in {project_dir}: -r syncs a PlatformIO project")
    async with agent.open_call("project.index", project=pid) as call:
        raw = await receive_json(call, MAX_INDEX_BYTES)
        await wait_result(call)
    with tempfile.TemporaryDirectory(prefix="pio-remote-") as tmp:
        sources = {path: project_dir / path for path in local}
        sources[INI] = resolved_ini(project_dir / INI, Path(tmp))
        if sources[INI] != project_dir / INI:
            local[INI] = transfer.hash_file(sources[INI], INI)
        delta = transfer.diff(local, transfer.index_from_json(raw))
        if on_plan is not None:
            on_plan(delta)
        blobs = [
            (sources[e.name], transfer.FileEntry(Path(e.name).name, e.size, e.sha256))
            for e in transfer.unique_blobs(delta.changed)
        ]
        staged = await stage(agent, blobs, progress)
    async with agent.open_call("project.sync", project=pid) as call:
        await send_json(call, transfer.index_to_json(local))
        reply = await wait_result(call)
    return SyncResult(
        staged.sent_bytes,
        int(reply["updated"]),
        int(reply["removed"]),
        len(local) - len(delta.changed),
        pid,
    )


async def send_json(call: Call, obj: Any) -> None:
    """A JSON document too big for one message, as the call's byte stream."""
    await call.send(json.dumps(obj, separators=(",", ":")).encode())
    await call.send_eof()


async def receive_json(call: Call, limit: int) -> Any:
    buf = bytearray()
    while (item := await call.receive()) is not None:
        if isinstance(item, bytes):
            buf += item
            if len(buf) > limit:
                raise RemoteError(f"{call.method}: reply is larger than {limit} bytes")
    if call.result is not None:
        await wait_result(call)  # the call ended without a reply: raise its error
    try:
        return json.loads(buf)
    except ValueError:
        raise RemoteError(f"{call.method}: reply is not JSON") from None
