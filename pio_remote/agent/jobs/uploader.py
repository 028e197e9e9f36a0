"""Which command flashes a board on this agent, and running it safely.

The choice, in order (docs/upload.md):

1. an ``[[uploader]]`` entry in agent.toml whose ``ports`` glob matches the port;
2. PlatformIO Core on the agent (``pio run -t nobuild -t upload``) on a
   platformio.ini the agent wrote from the client's (iniwriter);
3. the project's own ``upload_command`` (``upload_protocol = custom``), only if
   the owner started the agent with ``--allow-client-commands``.

Templates are split with shlex and placeholders are substituted inside each
argument, with no shell, so a port name like ``x;rm -rf ~`` stays one argument.
The uploader runs in a process group of its own (proctree.py: POSIX groups,
Windows' CREATE_NEW_PROCESS_GROUP and tree kill); however the call ends (done,
cancelled by Ctrl-C on the client, session lost), the whole group is killed and
reaped before the port is released.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from pio_remote.agent import gate
from pio_remote.agent.config import PLACEHOLDERS, AgentConfig
from pio_remote.agent.jobs import proctree

log = logging.getLogger(__name__)

# in agent.toml.
_PLACEHOLDER = re.compile(
    r"\$(?:\{(" + "|".join(PLACEHOLDERS) + r")\}|(" + "|".join(PLACEHOLDERS) + r")(?![A-Za-z0-9_]))"
)
# After SIGTERM, how long an uploader may take to exit before SIGKILL: enough
# for a flashing tool to reset the chip and close the port, short for Ctrl-C.
TERM_GRACE = 2.0
# Output is read in blocks this size and forwarded as is: lines are the
# client's concern, and progress bars that rewrite one line still flow.
OUTPUT_BLOCK = 16 * 1024


class UploaderError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Plan:
    """The command to run and why it was chosen (shown to the client)."""

    argv: list[str]
    origin: str
    cwd: Path
    client_code: bool = False  # the client's upload_command: runs in the sandbox


def render(template: str, values: dict[str, str], flags: list[str] | None = None) -> list[str]:
    """Split a command template and fill in placeholders, one argument at a time.

    An argument that is exactly ``$UPLOAD_FLAGS`` becomes the (already split)
    flags, as separate arguments; other ``$NAME``s that are not placeholders stay.
    """
    try:
        parts = shlex.split(template)
    except ValueError as exc:
        raise UploaderError("bad_uploader", f"cannot split command {template!r}: {exc}") from None
    if not parts:
        raise UploaderError("bad_uploader", "the uploader command is empty")
    argv: list[str] = []
    for part in parts:
        if part in ("$UPLOAD_FLAGS", "${UPLOAD_FLAGS}"):
            argv.extend(flags or [])
            continue
        argv.append(_PLACEHOLDER.sub(lambda m: values.get(m.group(1) or m.group(2), ""), part))
    return argv


def client_commands_allowed(config: AgentConfig) -> bool:
    """The owner's choice: agent.toml, or --allow-client-commands on 'agent start'."""
    return config.allow_client_commands


def matching_uploader(config: AgentConfig, port: str) -> tuple[int, str] | None:
    """(1-based index, command) of the first [[uploader]] one of whose ports globs matches
    (``*`` never crosses ``/``, and ``.``/``..`` components never match: gate.glob_match)."""
    for i, up in enumerate(config.uploaders, 1):
        if port and any(gate.glob_match(port, glob) for glob in up.ports):
            return i, up.command
    return None


def find_platformio() -> str | None:
    return shutil.which("pio") or shutil.which("platformio")


def refused_client_command(agent_id: str, port: str) -> UploaderError:
    return UploaderError(
        "client_command_refused",
        f"agent '{agent_id}' does not run upload commands sent by clients "
        "(upload_protocol = custom with upload_command in platformio.ini): its owner can "
        "allow them with 'pio-remote agent start --allow-client-commands' (or "
        "allow_client_commands = true in agent.toml), or add an [[uploader]] entry whose "
        f"ports glob matches '{port or '<port>'}' to the agent's agent.toml",
    )


def no_uploader(agent_id: str, port: str) -> UploaderError:
    return UploaderError(
        "no_uploader",
        f"agent '{agent_id}' has no uploader for port '{port or '<none>'}': add an "
        '[[uploader]] entry (ports = "<glob>", command = "... $UPLOAD_PORT $SOURCE") to '
        "its agent.toml and restart the agent (agent.toml is read when it starts), install "
        "PlatformIO Core on it, or upload a PlatformIO project",
    )


@dataclass(frozen=True)
class Job:
    """Everything the choice depends on, as the agent has it on disk."""

    agent_id: str
    port: str
    speed: str
    source: Path  # the firmware, in the job's build dir
    project_dir: Path  # holds the agent-written platformio.ini and .pio/build/<env>/
    env: str | None  # None: no platformio.ini (bare --firmware upload)
    targets: list[str]
    client_command: str | None
    upload_flags: list[str]
    verbose: bool = False
    silent: bool = False


def choose(config: AgentConfig, job: Job) -> Plan:
    """Pick the uploader by the documented order; refuse client commands unless allowed."""
    values = {
        "SOURCE": str(job.source),
        "UPLOAD_PORT": job.port,
        "UPLOAD_SPEED": job.speed,
        "PROJECT_DIR": str(job.project_dir),
        "BUILD_DIR": str(job.source.parent),
    }
    found = matching_uploader(config, job.port)
    if found is not None:
        index, command = found
        other = [t for t in job.targets if t not in ("upload", "program")]
        if other:
            raise UploaderError(
                "unsupported_target",
                f"agent.toml [[uploader]] {index} only flashes firmware; target(s) "
                f"{', '.join(other)} need PlatformIO Core on the agent",
            )
        globs = ", ".join(config.uploaders[index - 1].ports)
        origin = f"agent.toml [[uploader]] {index} (ports = {globs})"
        return Plan(render(command, values, job.upload_flags), origin, job.project_dir)
    if job.client_command is not None and not client_commands_allowed(config):
        raise refused_client_command(job.agent_id, job.port)
    pio = find_platformio()
    if pio is not None and job.env is not None:
        argv = [pio, "run", "-d", str(job.project_dir), "-e", job.env, "-t", "nobuild"]
        for target in job.targets:
            argv += ["-t", target]
        if job.port:
            argv += ["--upload-port", job.port]
        argv.append("--disable-auto-clean")
        argv += ["-v"] if job.verbose else ["-s"] if job.silent else []
        # Client commands allowed: the ini may carry the client's upload_command and scripts.
        allowed = client_commands_allowed(config)
        return Plan(argv, "PlatformIO Core on the agent", job.project_dir, client_code=allowed)
    if job.client_command is not None:
        return Plan(
            render(job.client_command, values, job.upload_flags),
            "upload_command from platformio.ini (client commands allowed)",
            job.project_dir,
            client_code=True,
        )
    raise no_uploader(job.agent_id, job.port)


def _cpu_limit(seconds: int) -> Callable[[], None]:
    """In the child before exec: RLIMIT_CPU for it and every process it starts."""

    import resource  # POSIX; only sandboxed jobs (Linux, bwrap) ask for a CPU limit

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 5))

    return apply


async def run_streaming(
    argv: list[str],
    cwd: Path,
    output: Callable[[bytes], Awaitable[None]],
    started: Callable[[int], None] | None = None,
    cpu_seconds: int | None = None,
) -> int:
    """Run a command in its own process group, forward its output, return its exit code.

    On any exit (including cancellation) the group is signalled and the leader
    reaped, shielded from the cancellation that got us here.
    """
    try:
        proc = await trio.lowlevel.open_process(
            argv,
            cwd=str(cwd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_cpu_limit(cpu_seconds) if cpu_seconds is not None else None,
            **proctree.popen_options(),
        )
    except OSError as exc:
        raise UploaderError(
            "uploader_failed", f"cannot start uploader {argv[0]!r}: {exc.strerror or exc}"
        ) from None
    if started is not None:
        started(proc.pid)
    try:
        assert proc.stdout is not None
        while chunk := await proc.stdout.receive_some(OUTPUT_BLOCK):
            await output(chunk)
        return await proc.wait()
    finally:
        with trio.CancelScope(shield=True):
            await _stop_group(proc)


async def _stop_group(proc: trio.Process) -> None:
    """Ask the group to stop if the leader still runs, then kill whatever is left; reap."""
    tree = proctree.snapshot(proc.pid)  # Windows: the tree, while its leader lives
    if proc.returncode is None:
        proctree.stop(proc.pid)
        with trio.move_on_after(TERM_GRACE):
            await proc.wait()
    # Children the uploader left behind (or that ignored TERM) share its group.
    proctree.kill(proc.pid, tree)
    await proc.wait()
    if proc.stdout is not None:
        await proc.stdout.aclose()
