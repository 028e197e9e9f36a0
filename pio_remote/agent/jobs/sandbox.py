"""The sandbox for the client's code: remote builds and client-allowed commands.

Building a client's project (`run -r`, `test -r`) runs the client's code: its
SCons scripts, its libraries' ``extraScript``, its ``!command`` flags, and GCC
reading whatever its sources ``#include``. No sanitizer can make that safe, so
remote builds are opt-in (``allow_remote_build``) and run under bubblewrap:

* the whole system read-only, the job directory the only writable place;
* PlatformIO's core directory (platforms, toolchains) read-only, the
  installation PlatformIO runs from re-exposed read-only;
* every home (``/home``, ``/root``, the agent's own), the agent's state
  (``PIO_REMOTE_HOME``: identity key, relay token, allow-lists) and its working
  directory (other clients' jobs and projects), ``/tmp`` and ``/run`` (sockets)
  hidden under empty tmpfs;
* a clean environment (the agent's may hold its relay token);
* no network, unless the job uploads to an OTA port; client commands also get
  their one serial port's device node;
* a PID namespace of its own that dies with the agent, a new session, a
  CPU-time limit on the whole job (its process tree, with RLIMIT_CPU per process
  as a backstop) and a wall-clock limit;
* offline, a package PlatformIO starts to install ends the job with one line.

``bwrap_argv`` is pure (unit-tested); ``wrap`` gathers the paths from the
agent's state and the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from pio_remote.agent.config import AgentConfig
from pio_remote.agent.jobs import uploader

# Where PlatformIO writes while it builds: its download/content cache, its locks.
SANDBOX_CACHE = "/tmp/.platformio-cache"
# PlatformIO takes these locks in its core directory even when it installs nothing.
CORE_LOCKS = ("platforms", "packages")
# The agent's environment is not the build's: only these names pass (never tokens).
PASS_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM")
NO_PASS_PREFIX = ("PLATFORMIO_AUTH_TOKEN",)
# PlatformIO's line when a project needs a package the core lacks; offline, it would
# retry for a minute and fail with an HTTP error.
INSTALLING = re.compile(rb"(?:Platform|Tool|Library|Package) Manager: Installing ([^\r\n]+)\r?\n")
# How much of the job's output is kept to find that line across reads.
SCAN_TAIL = 4096
# How often the job's CPU time is summed (a /proc scan: cheap).
CPU_POLL = 0.5
# Directories hidden under an empty tmpfs, besides the agent's own state and homes.
ALWAYS_HIDDEN = ("/home", "/root", "/tmp", "/var/tmp", "/run")


class SandboxRefused(Exception):
    """A job this agent will not run, or stopped at a limit: one line for the client."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Spec:
    """What one sandboxed job may see; every path absolute."""

    job_dir: Path
    core_dir: Path | None  # None: PlatformIO has none here (then builds fail in one line)
    hidden: list[Path]  # empty tmpfs over each
    readonly: list[Path]  # re-exposed read-only (PlatformIO's installation, core dir)
    locks: list[Path] = field(default_factory=list)  # PlatformIO's lock files: /dev/null
    env: dict[str, str] = field(default_factory=dict)
    network: bool = False
    device: tuple[str, str] | None = None  # (the device node, the name the job uses)


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def safe_readonly(candidates: list[Path], secrets: list[Path], homes: list[Path]) -> list[Path]:
    """Paths that may be re-exposed: never a home itself, never one holding the agent's state."""
    out: list[Path] = []
    for path in candidates:
        if path == Path("/") or path in homes or any(_within(s, path) for s in secrets):
            continue
        if path not in out:
            out.append(path)
    return out


def _outermost(paths: list[Path]) -> list[Path]:
    """Drop paths under another in the list: one tmpfs hides them all."""
    ordered = sorted(set(paths), key=lambda p: (len(p.parts), str(p)))
    kept: list[Path] = []
    for path in ordered:
        if not any(_within(path, k) for k in kept):
            kept.append(path)
    return kept


def bwrap_argv(bwrap: str, spec: Spec, argv: list[str]) -> list[str]:
    """The bwrap command line that runs ``argv`` in the sandbox ``spec`` describes.

    Order matters: bwrap applies mounts in sequence, so the tmpfs that hide
    come after the read-only root, and what is re-exposed comes after them.
    """
    out = [bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc"]
    out += ["--unshare-uts", "--unshare-cgroup-try"]
    if not spec.network:
        out.append("--unshare-net")
    out += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for path in _outermost(spec.hidden):
        out += ["--tmpfs", str(path)]
    for path in spec.readonly:
        out += ["--ro-bind", str(path), str(path)]
    if spec.core_dir is not None:
        out += ["--ro-bind", str(spec.core_dir), str(spec.core_dir)]
    for lock in spec.locks:
        out += ["--dev-bind", "/dev/null", str(lock)]
    out += ["--bind", str(spec.job_dir), str(spec.job_dir)]
    if spec.device is not None:
        node, name = spec.device  # at the name the job uses: /dev/pts is a new instance
        out += ["--dev-bind", node, name]
    out.append("--clearenv")
    for name, value in sorted(spec.env.items()):
        out += ["--setenv", name, value]
    out += ["--chdir", str(spec.job_dir), "--", *argv]
    return out


def sandbox_env(environ: dict[str, str], core_dir: Path) -> dict[str, str]:
    """The build's environment: locale and PATH, PlatformIO's settings, no secrets."""
    env = {k: v for k, v in environ.items() if k in PASS_ENV}
    for name, value in environ.items():
        if name.startswith("PLATFORMIO_") and not name.startswith(NO_PASS_PREFIX):
            env[name] = value
    env.update(
        HOME="/tmp",
        PLATFORMIO_CORE_DIR=str(core_dir),
        PLATFORMIO_CACHE_DIR=SANDBOX_CACHE,
        PLATFORMIO_SETTING_ENABLE_TELEMETRY="no",
    )
    return env


def core_dir(environ: dict[str, str]) -> Path:
    """PlatformIO's core directory: PLATFORMIO_CORE_DIR, else ~/.platformio."""
    value = environ.get("PLATFORMIO_CORE_DIR")
    return Path(value).resolve() if value else Path.home() / ".platformio"


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


def refused_remote_build(agent_id: str) -> SandboxRefused:
    return SandboxRefused(
        "remote_build_refused",
        f"agent '{agent_id}' does not build clients' projects (run -r and test -r run the "
        "client's code there): its owner can allow it with allow_remote_build = true in "
        "agent.toml, or build locally and run without -r",
    )


def no_bwrap(agent_id: str) -> SandboxRefused:
    return SandboxRefused(
        "no_sandbox",
        f"agent '{agent_id}' cannot sandbox the client's code: bwrap is not installed "
        "there (on Debian or Raspberry Pi OS: apt install bubblewrap); its owner can run it "
        'unsandboxed with remote_build_sandbox = "none" in agent.toml',
    )


def check_remote_build(config: AgentConfig, agent_id: str) -> None:
    """Refuse `run -r` / `test -r` unless the owner allowed them and the sandbox is there."""
    if not config.allow_remote_build:
        raise refused_remote_build(agent_id)
    sandbox_tool(config, agent_id)


def sandbox_tool(config: AgentConfig, agent_id: str) -> str | None:
    """bwrap's path; None when the owner chose no sandbox; refused when bwrap is missing."""
    if config.remote_build_sandbox == "none":
        return None
    bwrap = find_bwrap()
    if bwrap is None:
        raise no_bwrap(agent_id)
    return bwrap


def _install_dirs(program: str) -> list[Path]:
    """Where a program and the interpreter in its ``#!`` live: re-exposed so it still runs."""
    dirs = [Path(sys.prefix), Path(sys.base_prefix)]
    path = Path(program)
    dirs += [path.parent, path.parent.parent, path.resolve().parent, path.resolve().parent.parent]
    try:
        with open(path, "rb") as fh:
            first = fh.readline(4096)
    except OSError:
        first = b""
    if first.startswith(b"#!"):
        interp = Path(first[2:].decode(errors="replace").split()[0])
        if interp.is_absolute():
            dirs += [interp.parent.parent, interp.resolve().parent.parent]
    if not path.is_absolute():
        dirs = dirs[:2]
    return [d for d in dirs if d.is_dir()]


def _core_locks(core: Path) -> list[Path]:
    """PlatformIO's lock files in its core, made if missing: /dev/null stands in for them.

    PlatformIO opens and flocks them even when it installs nothing. /dev/null takes
    the flock and keeps nothing, so no job writes a file another job (or the agent)
    would read, and no file in a job directory ever becomes a mount source.
    """
    locks = []
    for name in CORE_LOCKS:
        lock = core / f"{name}.lock"
        try:
            lock.touch(exist_ok=True)
        except OSError:
            continue  # not ours to create: PlatformIO then fails with its own message
        locks.append(lock)
    return locks


def wrap(
    config: AgentConfig,
    agent_id: str,
    state_dirs: list[Path],
    job_dir: Path,
    argv: list[str],
    network: bool = False,
    device: str | None = None,
) -> list[str]:
    """``argv`` run in the sandbox (or as is, if the owner chose none)."""
    bwrap = sandbox_tool(config, agent_id)
    if bwrap is None:
        return argv
    environ = dict(os.environ)
    core = core_dir(environ)
    job_dir = job_dir.resolve()
    homes = [Path.home().resolve()]
    secrets = [p.resolve() for p in state_dirs]
    hidden = [Path(p) for p in ALWAYS_HIDDEN] + homes + secrets
    have_core = core.is_dir()
    spec = Spec(
        job_dir=job_dir,
        core_dir=core if have_core else None,
        hidden=[p for p in hidden if p.is_dir()],
        readonly=safe_readonly(_install_dirs(argv[0]), secrets, homes),
        locks=_core_locks(core) if have_core else [],
        env=sandbox_env(environ, core),
        network=network,
        device=(os.path.realpath(device), device) if device else None,
    )
    return bwrap_argv(bwrap, spec, argv)


def tree_cpu_seconds(root: int, proc: Path = Path("/proc")) -> float:
    """CPU time of a process tree: each live process's own, plus what it reaped.

    A sandboxed job's processes are all below bwrap (bwrap's PID 1 reaps the
    orphans), so this is the job's whole CPU time, unlike RLIMIT_CPU's per process.
    """
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            fields = (proc / entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        # utime, stime, cutime, cstime: proc(5) fields 14-17, 11-14 after "(comm)".
        ticks[pid] = sum(int(f) for f in fields[11:15])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += children.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def missing_package(tail: bytes) -> str | None:
    """The package PlatformIO started installing, if this output says it did."""
    m = INSTALLING.search(tail)
    return m.group(1).decode(errors="replace").strip() if m else None


def why_stopped(
    config: AgentConfig, what: str, missing: str | None, over_cpu: bool, timed_out: bool
) -> SandboxRefused | None:
    """The one line for a job the agent stopped, naming the cause and what fixes it."""
    if missing is not None:
        return SandboxRefused(
            "missing_package",
            f"{what} needs {missing}, which is not installed on the agent, and remote builds "
            "have no network: the agent's owner installs it beforehand ('pio pkg install -g "
            "...' as the agent's user), or build locally and run without -r",
        )
    if over_cpu:
        return SandboxRefused(
            "job_limit",
            f"{what} stopped: it used more than {config.remote_build_cpu_seconds} s of CPU "
            "time (remote_build_cpu_seconds in the agent's agent.toml)",
        )
    if timed_out:
        return SandboxRefused(
            "job_limit",
            f"{what} stopped: it ran longer than {config.remote_build_timeout} s "
            "(remote_build_timeout in the agent's agent.toml)",
        )
    return None


async def run_job(
    config: AgentConfig,
    what: str,
    argv: list[str],
    cwd: Path,
    output: Callable[[bytes], Awaitable[None]],
    started: Callable[[int], None] | None = None,
    offline: bool = False,
) -> int:
    """Run a (wrapped) job under the owner's CPU-time and wall-clock limits; its exit code.

    Over a limit, the job is cancelled: ``run_streaming`` kills its process group
    and bwrap's PID namespace takes the rest. The client gets one line naming the
    limit and its agent.toml key. RLIMIT_CPU (a little above the job's limit)
    stops a single runaway process even if the watchdog were late. ``offline``
    (no network in the sandbox): a package PlatformIO starts to install ends the job
    at once with one line naming it.
    """
    cpu_limit = config.remote_build_cpu_seconds
    pids: list[int] = []
    over_cpu = False
    tail = b""
    missing: str | None = None

    async def forward(chunk: bytes) -> None:
        nonlocal tail, missing
        await output(chunk)
        if offline and missing is None:
            tail = (tail + chunk)[-SCAN_TAIL:]
            missing = missing_package(tail)
            if missing is not None:
                scope.cancel()

    def on_start(pid: int) -> None:
        pids.append(pid)
        if started is not None:
            started(pid)

    async def watch_cpu(scope: trio.CancelScope) -> None:
        nonlocal over_cpu
        while True:
            await trio.sleep(CPU_POLL)
            if pids and tree_cpu_seconds(pids[0]) > cpu_limit:
                over_cpu = True
                scope.cancel()
                return

    code = -1
    with trio.move_on_after(config.remote_build_timeout) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_cpu, scope)
            code = await uploader.run_streaming(argv, cwd, forward, on_start, cpu_limit + 1)
            nursery.cancel_scope.cancel()
    stopped = why_stopped(config, what, missing, over_cpu, scope.cancelled_caught)
    if stopped is not None:
        raise stopped
    return code
