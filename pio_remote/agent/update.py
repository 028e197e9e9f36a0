"""Agent call for `pio-remote update`: what this agent runs, and updating PlatformIO on it.

    agent.update  {dry_run}  -> EVENT {info: {...}}, DATA (PlatformIO's output)
                             -> {version, python, platformio, can_test, exit_code, message}

Only the agent's owner may call it: the agent's own key, or a key paired with
``agent invite --owner`` (the allow-list's role, never the account name the relay
claims), unless agent.toml says ``allow_shared_update = true``: updating changes
the toolchains every user of the agent flashes with.
"""

from __future__ import annotations

import platform
import subprocess
from typing import Any

import trio

from pio_remote import __version__
from pio_remote.agent import allowlist as trust
from pio_remote.agent.handlers import CallContext, CallFailed, handler
from pio_remote.agent.jobs import uploader
from pio_remote.wire import e2e

# `pio --version` answers at once; more means a broken install, not a slow one.
VERSION_TIMEOUT = 30.0
INSTALL_HINT = "install it on the agent with 'pip install platformio' (in the agent's Python)"


async def _pio_version(pio: str) -> str:
    with trio.move_on_after(VERSION_TIMEOUT):
        done = await trio.run_process(
            [pio, "--version"], capture_stdout=True, stderr=subprocess.STDOUT, check=False
        )
        text = done.stdout.decode(errors="replace").strip()
        return text.splitlines()[-1] if text else f"(exit {done.returncode})"
    return f"(no answer within {VERSION_TIMEOUT:g} s)"


@handler("agent.update")
async def agent_update(ctx: CallContext, dry_run: bool = False) -> dict[str, Any]:
    agent = ctx.agent
    if ctx.channel.role != trust.OWNER and not agent.config.allow_shared_update:
        raise CallFailed(
            "not_owner",
            f"only the owner of agent '{agent.agent_id}' may update it, and this client "
            f"(key {e2e.fingerprint(ctx.channel.client_key)}) is paired as a client; on "
            "the agent, pair an owner's key with 'pio-remote agent invite --owner', or let "
            "every paired client update with allow_shared_update = true in agent.toml",
        )
    pio = uploader.find_platformio()
    info: dict[str, Any] = {
        "version": __version__,
        "python": platform.python_version(),
        "platformio": await _pio_version(pio) if pio else None,
        "can_test": pio is not None,
    }
    await ctx.call.send_event({"info": info})
    if pio is None:
        message = (
            "PlatformIO Core is not installed: this agent flashes only with its [[uploader]] "
            f"entries and cannot build (-r); {INSTALL_HINT}"
        )
        return {**info, "exit_code": None, "message": message}
    argv = [pio, "update", "--dry-run"] if dry_run else [pio, "pkg", "update", "-g"]
    await ctx.call.send_event({"running": argv})
    work = agent.working_dir or agent.home / "work"
    work.mkdir(parents=True, exist_ok=True)
    code = await uploader.run_streaming(argv, work, ctx.call.send)
    return {**info, "exit_code": code, "message": ""}
