"""Reset and power: the board farm's hands (`device reset`, `device power`).

    device.reset   {port}          -> {port, style}
    device.power   {port, action}  -> {port, action}   action: on | off | cycle

A reset pulses the port's modem lines as ``pio test`` and esptool do (``[[reset]]``
picks the style per port). Power runs the owner's ``[[power]]`` command lines; the
only client value in them is ``$PORT``, and only once the port passed the gate and
matched that entry's glob. Both hold the port exclusively, so a lease another client
holds refuses them and a running monitor pauses around them, as around an upload.
"""

from __future__ import annotations

import logging
import re
import shlex
import time
from pathlib import Path

import serial
import trio

from pio_remote.agent import gate, lease_calls
from pio_remote.agent.config import AgentConfig, PowerConfig, ResetConfig
from pio_remote.agent.handlers import CallContext, CallFailed, handler
from pio_remote.agent.jobs import uploader
from pio_remote.agent.serial.port import _has_modem_lines
from pio_remote.agent.serial.portlock import PortBusy

log = logging.getLogger(__name__)

POWER_ACTIONS = ("on", "off", "cycle")
# A device path named while its board is off: plain components, no glob characters,
# spaces or shell syntax (a glob such as "/dev/b*" would otherwise match itself).
_DEVICE_PATH = re.compile(r"^(?:/[A-Za-z0-9_:+@,=-][A-Za-z0-9_.:+@,=-]*)+$")
# Output of a failed power command shown to the client: its last line or so.
SHOWN_OUTPUT = 400


def power_entry(config: AgentConfig, port: str) -> PowerConfig | None:
    """The first ``[[power]]`` entry one of whose globs matches ``port``."""
    for entry in config.power:
        if any(gate.glob_match(port, g) for g in entry.ports):
            return entry
    return None


def reset_entry(config: AgentConfig, port: str) -> ResetConfig:
    for entry in config.reset:
        if any(gate.glob_match(port, g) for g in entry.ports):
            return entry
    return ResetConfig(ports=config.port_glob)


def _unknown(ctx: CallContext, port: str) -> CallFailed:
    return CallFailed(
        "unknown_port",
        f"port {port} is not offered by agent '{ctx.agent.agent_id}': see "
        "'pio-remote device list' for its ports",
    )


def _listed_port(ctx: CallContext, port: str) -> gate.Port:
    found = gate.offered_port(ctx.agent.config, port, network=False)
    if found is None:
        raise _unknown(ctx, port)
    return found


def _power_port(ctx: CallContext, port: str) -> tuple[gate.Port, PowerConfig]:
    """A listed port, or one a ``[[power]]`` glob matches while its board is off (its
    device gone); either way the entry that powers it."""
    found = gate.offered_port(ctx.agent.config, port, network=False)
    if found is None and _DEVICE_PATH.match(port) and len(port) < gate.MAX_PATH:
        if power_entry(ctx.agent.config, port) is not None:
            found = gate.Port(port, port, True)
    if found is None:
        raise _unknown(ctx, port)
    entry = power_entry(ctx.agent.config, found.name)
    if entry is None:
        raise CallFailed(
            "no_power",
            f"agent '{ctx.agent.agent_id}' has no power control for {found.name}: its owner "
            "adds a [[power]] entry with on/off commands to agent.toml (docs/agent-config.md)",
        )
    return found, entry


def power_argv(command: str, port: str) -> list[str]:
    """The owner's command split like an uploader's, ``$PORT`` filled in per argument."""
    argv = [a.replace("${PORT}", port).replace("$PORT", port) for a in shlex.split(command)]
    if not argv:
        raise CallFailed("power_failed", "the [[power]] command is empty")
    return argv


async def _run_power(ctx: CallContext, entry: PowerConfig, action: str, port: str) -> None:
    argv = power_argv(getattr(entry, action), port)
    output = bytearray()

    async def keep(chunk: bytes) -> None:
        output.extend(chunk)
        del output[: -SHOWN_OUTPUT * 4]

    log.info("power %s %s: %s", action, port, argv)
    try:
        with trio.fail_after(entry.timeout):
            code = await uploader.run_streaming(argv, Path(ctx.agent.home), keep)
    except trio.TooSlowError:
        raise CallFailed(
            "power_failed",
            f"power {action} for {port} did not finish within {entry.timeout} s "
            "(the [[power]] timeout in agent.toml)",
        ) from None
    except uploader.UploaderError as exc:
        raise CallFailed("power_failed", f"power {action} for {port}: {exc}") from None
    if code != 0:
        tail = output.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise CallFailed(
            "power_failed",
            f"power {action} for {port}: the agent's command exited with {code}: "
            f"{tail[0][:SHOWN_OUTPUT]}",
        )


@handler("device.power")
async def device_power(ctx: CallContext, port: str, action: str) -> dict[str, str]:
    if action not in POWER_ACTIONS:
        raise CallFailed("bad_params", f"action must be one of {', '.join(POWER_ACTIONS)}")
    found, entry = _power_port(ctx, port)
    try:
        async with ctx.agent.ports.exclusive(found.key, f"power {action} by {ctx.channel.holder}"):
            if action in ("off", "cycle"):
                await _run_power(ctx, entry, "off", found.name)
            if action == "cycle":
                await trio.sleep(entry.cycle_delay_ms / 1000)
            if action in ("on", "cycle"):
                await _run_power(ctx, entry, "on", found.name)
    except PortBusy as exc:
        raise lease_calls.busy_failure(ctx.agent, exc) from None
    return {"port": found.name, "action": action}


def pulse(path: str, style: str, pulse_s: float) -> None:
    """Reset the board on ``path``: what pio test does (both lines low, then high),
    esptool's hard reset (RTS), an Arduino-style DTR pulse, or just an open."""
    ser = serial.Serial()
    ser.port = path
    ser.dtr = ser.rts = True
    try:
        ser.open()
    except (OSError, serial.SerialException) as exc:
        raise CallFailed("port_error", f"cannot open {path}: {exc}") from None
    try:
        if style == "open":
            return
        if not _has_modem_lines(ser.fileno()):
            raise CallFailed(
                "no_modem_lines",
                f"{path} has no DTR/RTS lines to pulse: if its board resets when the port "
                f'opens, the agent\'s owner sets [[reset]] ports = "{path}" style = "open" '
                "in agent.toml",
            )
        lines = {"pio": ("dtr", "rts"), "rts": ("rts",), "dtr": ("dtr",)}[style]
        for name in lines:
            setattr(ser, name, False)
        time.sleep(pulse_s)
        for name in lines:
            setattr(ser, name, True)
        time.sleep(pulse_s)
    finally:
        ser.close()


@handler("device.reset")
async def device_reset(ctx: CallContext, port: str) -> dict[str, str]:
    found = _listed_port(ctx, port)
    entry = reset_entry(ctx.agent.config, found.name)
    try:
        async with ctx.agent.ports.exclusive(found.key, f"reset by {ctx.channel.holder}"):
            await trio.to_thread.run_sync(pulse, found.name, entry.style, entry.pulse_ms / 1000)
    except PortBusy as exc:
        raise lease_calls.busy_failure(ctx.agent, exc) from None
    log.info("reset %s (%s) for %s", found.name, entry.style, ctx.channel.holder)
    return {"port": found.name, "style": entry.style}


def describe(config: AgentConfig, port: str) -> dict[str, object]:
    """``device list``'s extra key for one port: ``power: true`` where it has control."""
    return {"power": True} if power_entry(config, port) is not None else {}
