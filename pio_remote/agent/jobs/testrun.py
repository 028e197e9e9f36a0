"""Agent calls for `pio-remote test`: flash a test image, read Unity's report back.

    test.boards  {upload_port: GLOB}  -> [{port, test_port, uploader}]
    test.run     {port, test_port, test_speed, no_reset, timeout, upload: {...} | None}
                 -> {missing: [sha256]} if the cache lacks a file (nothing ran), else
                 -> EVENT {phase: "upload"}, DATA (uploader output), EVENT {uploaded: code}
                 -> EVENT {phase: "test", test_port}, DATA (the board's raw output)
                 -> EVENT {case: {...}} per Unity result line, EVENT {restarted: why}
                 -> {status, summary, error, duration, test_port, uploader, upload_exit}

One call is one suite on one board. The upload is ``upload.flash`` itself (the
same uploader choice, port check and port lock as ``run -t upload``). Then the
test port is opened and held exclusively, the board is reset with a DTR/RTS
pulse as ``pio test`` does (unless ``no_reset``), and its output goes through
``unity.UnityParser`` until the summary, the timeout, or the port goes away.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import trio

from pio_remote.agent import gate, lease_calls
from pio_remote.agent.config import AgentConfig, UploaderConfig
from pio_remote.agent.handlers import CallContext, CallFailed, bind_params, handler
from pio_remote.agent.jobs import flash as upload_calls
from pio_remote.agent.jobs import uploader
from pio_remote.agent.serial import backend, ports
from pio_remote.agent.serial.common import OPEN_ERRORS, PortClosed, PortGone
from pio_remote.agent.serial.portlock import PortBusy
from pio_remote.wire import unity
from pio_remote.wire.serial_events import SerialSettings

log = logging.getLogger(__name__)

# PlatformIO's default test_speed.
DEFAULT_TEST_SPEED = 115200
# pio test's reset: DTR and RTS low, this long, then high, this long again.
RESET_PULSE = 0.1
# Upper bound on --timeout: a suite that runs longer than a day is a hang.
MAX_TIMEOUT = 24 * 3600.0
# Output lines kept as a case's stdout (the lines printed since the case before).
MAX_STDOUT_LINES = 64


def uploader_for(config: AgentConfig, port: str) -> UploaderConfig | None:
    found = uploader.matching_uploader(config, port)
    return config.uploaders[found[0] - 1] if found else None


def test_port_for(config: AgentConfig, port: str, requested: str) -> str:
    """--test-port, else the [[uploader]]'s test_port, else the upload port itself."""
    if requested:
        return requested
    up = uploader_for(config, port)
    if up is not None and up.test_port:
        return up.test_port.replace("${UPLOAD_PORT}", port).replace("$UPLOAD_PORT", port)
    return port


@handler("test.boards")
async def test_boards(ctx: CallContext, upload_port: str = "") -> list[dict[str, str]]:
    """The boards a farm run targets: offered ports matching the glob, else every
    offered port that an [[uploader]] claims."""
    config = ctx.agent.config
    found = []
    for port in ports.offered(config):
        up = uploader_for(config, port)
        if upload_port and not gate.glob_match(port, upload_port):
            continue
        if not upload_port and up is None:
            continue
        found.append(
            {
                "port": port,
                "test_port": test_port_for(config, port, ""),
                "uploader": f"[[uploader]] ports = {', '.join(up.ports)}" if up else "",
            }
        )
    return found


@handler("test.run")
async def test_run(
    ctx: CallContext,
    port: str = "",
    test_port: str = "",
    test_speed: int = 0,
    no_reset: bool = False,
    timeout: float = 120.0,
    upload: dict[str, Any] | None = None,
    testing: bool = True,
    wait: float = 0,
) -> dict[str, Any]:
    """Flash (unless ``upload`` is None), then read one suite's Unity report (unless
    not ``testing``: --without-testing)."""
    if upload is not None:  # upload.flash's params, checked as that call's would be
        if "port" in upload:
            raise CallFailed("bad_params", "test.run: upload takes no port (it is test.run's)")
        upload = bind_params(upload_calls.upload_flash, "test.run upload", {**upload, "port": port})
    if not 0 < timeout <= MAX_TIMEOUT:
        raise CallFailed("bad_params", f"timeout must be between 0 and {MAX_TIMEOUT:g} s")
    config = ctx.agent.config
    path = test_port_for(config, port, test_port)
    if not path:
        raise CallFailed("bad_params", "give a test port or an upload port")
    reading = gate.offered_port(config, path, network=False)
    if reading is None:
        raise CallFailed(
            "unknown_port",
            f"test port {path} is not offered by agent '{ctx.agent.agent_id}': see "
            "'pio-remote device list' for its ports",
        )
    flashing = gate.offered_port(config, port) if port else None
    if port and flashing is None:
        raise CallFailed(
            "unknown_port",
            f"port {port} is not offered by agent '{ctx.agent.agent_id}': see "
            "'pio-remote device list' for its ports",
        )
    up = uploader_for(config, port)
    speed = test_speed or (up.test_speed if up else None) or DEFAULT_TEST_SPEED
    try:
        settings = SerialSettings(baudrate=speed)
    except ValueError as exc:
        raise CallFailed("bad_params", f"test_speed: {exc}") from None
    wait = lease_calls.check_wait(wait)
    started = time.monotonic()  # a wait for a lease counts: the board was busy with this run
    keys = [p.key for p in (flashing, reading) if p is not None]
    for leased in dict.fromkeys(keys):
        await lease_calls.wait_until_free(
            ctx.agent.ports, ctx.agent.agent_id, leased, wait, lease_calls.announcer(ctx)
        )
    result: dict[str, Any] = {"test_port": path, "uploader": "", "upload_exit": None}
    if upload is not None:
        flashed = await _flash(ctx, port, upload)
        if "missing" in flashed:
            return flashed
        result.update(uploader=flashed["uploader"], upload_exit=flashed["exit_code"])
        await ctx.call.send_event({"uploaded": flashed["exit_code"]})
        if flashed["exit_code"] != 0:
            error = f"the uploader exited with {flashed['exit_code']}"
            return {**result, "status": unity.ERRORED, "summary": None, "error": error}
    if not testing:
        return {**result, "status": unity.PASSED, "summary": None, "error": ""}
    await ctx.call.send_event({"phase": "test", "test_port": path, "speed": speed})
    try:
        async with ctx.agent.ports.exclusive(reading.key, f"test by {ctx.channel.holder}"):
            outcome = await _read_suite(ctx, path, settings, no_reset, timeout)
    except PortBusy as exc:
        raise lease_calls.busy_failure(ctx.agent, exc) from None
    return {**result, **outcome, "duration": round(time.monotonic() - started, 3)}


async def _flash(ctx: CallContext, port: str, upload: dict[str, Any]) -> dict[str, Any]:
    await ctx.call.send_event({"phase": "upload"})
    value: dict[str, Any] = await upload_calls.upload_flash(ctx, **upload)
    return value


async def _read_suite(
    ctx: CallContext, path: str, settings: SerialSettings, no_reset: bool, timeout: float
) -> dict[str, Any]:
    """Open the port, reset the board, parse until the summary, timeout or unplug."""
    parser = unity.UnityParser()
    error = ""
    try:
        serial_port, _ = await backend.open_port(ctx.agent.config.serial_backend, path, settings)
    except OPEN_ERRORS as exc:
        raise CallFailed("port_error", f"cannot open test port {path}: {exc}") from None
    try:
        if not no_reset and serial_port.has_modem_lines:
            serial_port.purge(True, False)
            low = replace(settings, dtr=False, rts=False)
            serial_port.apply(low)
            await trio.sleep(RESET_PULSE)
            serial_port.apply(replace(settings, dtr=True, rts=True))
            await trio.sleep(RESET_PULSE)
        reader = _Reader(ctx, parser)
        with trio.move_on_after(timeout) as deadline:
            while not parser.done:
                try:
                    data = await serial_port.read()
                except (PortGone, PortClosed) as exc:
                    error = f"test port lost: {exc}"
                    break
                await ctx.call.send(data)
                parser.receive_data(data)
                await reader.drain()
        if deadline.cancelled_caught:
            error = f"no Unity summary within {timeout:g} s"
        parser.receive_eof()
        await reader.drain()
    finally:
        serial_port.close()
        with trio.CancelScope(shield=True):
            await serial_port.wait_closed()
    return reader.outcome(error)


class _Reader:
    """Turns parser events into call events, timing each case from the one before."""

    def __init__(self, ctx: CallContext, parser: unity.UnityParser):
        self.ctx = ctx
        self.parser = parser
        self.last = time.monotonic()
        self.stdout: list[str] = []
        self.failed = 0
        self.summary: unity.Summary | None = None

    async def drain(self) -> None:
        while (event := self.parser.next_event()) is not unity.NEED_DATA:
            match event:
                case unity.Output(text=text):
                    self.stdout = [*self.stdout[-(MAX_STDOUT_LINES - 1) :], text]
                case unity.CaseResult():
                    now = time.monotonic()
                    case = {
                        "file": event.file,
                        "line": event.line,
                        "name": event.name,
                        "status": event.status,
                        "message": event.message,
                        "stdout": "\n".join(self.stdout),
                        "duration": round(now - self.last, 3),
                    }
                    self.last, self.stdout = now, []
                    self.failed += event.status == unity.FAILED
                    await self.ctx.call.send_event({"case": case})
                case unity.Restarted(reason=reason):
                    self.failed = 0
                    await self.ctx.call.send_event({"restarted": reason})
                case unity.Summary():
                    self.summary = event

    def outcome(self, error: str) -> dict[str, Any]:
        s = self.summary
        if s is None:
            return {"status": unity.ERRORED, "summary": None, "error": error or "no summary"}
        passed = s.ok and s.failures == 0 and self.failed == 0
        return {
            "status": unity.PASSED if passed else unity.FAILED,
            "summary": {"tests": s.tests, "failures": s.failures, "ignored": s.ignored},
            "error": "",
        }
