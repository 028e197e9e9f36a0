"""`agent.toml`: the owner's settings for one agent, checked against a declared schema.

Every key is a field of a dataclass below; its type says what the file may hold.
A file that breaks the schema stops the agent at start with one line naming the
file, the key and what was expected, so a typo (``prot_glob``) or a value of the
wrong kind (``max_upload_bytes = "lots"``) never silently means something else.
Every key is documented in docs/agent-config.md.

The types are checked by schema.py, which checks a client's call parameters too.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pio_remote.agent import schema
from pio_remote.agent.schema import Globs
from pio_remote.agent.serial import backend
from pio_remote.home import ConfigError

CONFIG_FILE = "agent.toml"

DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024 * 1024
# A client sends its handshake the moment the relay answers its OPEN, so an honest
# one needs a relay round trip plus an X25519 or two: well under a second even on a
# congested mobile link to a busy Pi. 5 s leaves that several times over, and frees a
# channel held open by someone who never handshakes twice as fast as the old 10 s.
DEFAULT_HANDSHAKE_TIMEOUT = 5
# Channels waiting for a handshake: each is a task and at most two buffered frames
# (2 x 64 KiB), so 64 cost at most 8 MiB on a Pi. A channel is only evicted when 16
# newer ones of its account arrive before its handshake (one round trip), so 16 CI
# jobs of one account may start their sessions in the same instant.
DEFAULT_MAX_PENDING_HANDSHAKES = 64
DEFAULT_MAX_PENDING_HANDSHAKES_PER_ACCOUNT = 16

# What an [[uploader]] command may name ($NAME or ${NAME}); uploader.render fills them in.
PLACEHOLDERS = ("SOURCE", "UPLOAD_PORT", "UPLOAD_SPEED", "PROJECT_DIR", "BUILD_DIR")
UPLOAD_FLAGS = "UPLOAD_FLAGS"  # an argument of its own: the environment's upload_flags
_DOLLAR_NAME = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
# Remote builds (run -r, test -r) run the client's code: sandboxed with bwrap, or "none".
SANDBOXES = ("bwrap", "none")
# Per build, sized for a Raspberry Pi compiling a large framework project.
DEFAULT_BUILD_CPU_SECONDS = 900
DEFAULT_BUILD_TIMEOUT = 1800
MIB = 1024 * 1024
# Budgets sized for a Raspberry Pi (docs/agent-config.md says why): disk on an SD
# card of 16 GB or more, memory on a board with 512 MB or more.
DEFAULT_CLIENT_DISK_QUOTA = 512 * MIB
DEFAULT_AGENT_DISK_CAP = 2048 * MIB
DEFAULT_SESSION_MEMORY = 16 * MIB
DEFAULT_AGENT_MEMORY = 64 * MIB
# A monitor whose session was lost keeps its port open this long, with the
# board's newest output in a ring of this size, for the client to resume
# (docs/monitor.md). Long enough for a relay restart or a roaming laptop.
DEFAULT_MONITOR_GRACE = 60
DEFAULT_MONITOR_RING = 1 * MIB
# A session's budget must hold a call's window plus its event reserve, or uploads crawl.
MIN_SESSION_MEMORY = 2 * MIB


@dataclass
class UploaderConfig:
    """An ``[[uploader]]`` table: the command that flashes boards on matching ports."""

    ports: Globs
    command: str
    # For `pio-remote test`: where the board prints its test results, if not `ports`.
    test_port: str | None = None
    test_speed: int | None = None


@dataclass
class ForwardConfig:
    """A ``[[forward]]`` table: TCP endpoints on the agent's network a client may reach."""

    allow: list[str]
    port: str | None = None  # a serial port the forward leases while it runs


# `device reset` styles (agent/serial/control.py): which modem lines pulse, or an open.
RESET_STYLES = ("pio", "rts", "dtr", "open")
DEFAULT_RESET_PULSE_MS = 100
DEFAULT_POWER_CYCLE_MS = 1000
DEFAULT_POWER_TIMEOUT = 30


@dataclass
class PowerConfig:
    """A ``[[power]]`` table: the owner's commands that switch matching boards on and off."""

    ports: Globs
    on: str
    off: str
    cycle_delay_ms: int = DEFAULT_POWER_CYCLE_MS
    timeout: int = DEFAULT_POWER_TIMEOUT


@dataclass
class ResetConfig:
    """A ``[[reset]]`` table: how ``device reset`` resets boards on matching ports."""

    ports: Globs
    style: str = "pio"
    pulse_ms: int = DEFAULT_RESET_PULSE_MS


@dataclass
class AgentConfig:
    name: str | None = None
    shares: list[str] = field(default_factory=list)
    port_glob: Globs = field(default_factory=lambda: Globs([]))
    uploader: list[UploaderConfig] = field(default_factory=list)
    forward: list[ForwardConfig] = field(default_factory=list)
    power: list[PowerConfig] = field(default_factory=list)
    reset: list[ResetConfig] = field(default_factory=list)
    allow_client_commands: bool = False
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    # `pio-remote update` from every paired client, not only the owner's keys.
    allow_shared_update: bool = False
    # Seconds a channel may wait for its client's handshake before it is closed.
    handshake_timeout: int = DEFAULT_HANDSHAKE_TIMEOUT
    # Channels waiting for a handshake, in total and per relay account (handshake.py).
    max_pending_handshakes: int = DEFAULT_MAX_PENDING_HANDSHAKES
    max_pending_handshakes_per_account: int = DEFAULT_MAX_PENDING_HANDSHAKES_PER_ACCOUNT
    # `run -r` / `test -r`: building a client's project runs the client's code here.
    allow_remote_build: bool = False
    remote_build_sandbox: str = "bwrap"
    remote_build_cpu_seconds: int = DEFAULT_BUILD_CPU_SECONDS
    remote_build_timeout: int = DEFAULT_BUILD_TIMEOUT
    # Budgets (docs/security.md): disk per client key and in all, client input in memory.
    client_disk_quota_bytes: int = DEFAULT_CLIENT_DISK_QUOTA
    agent_disk_cap_bytes: int = DEFAULT_AGENT_DISK_CAP
    session_memory_bytes: int = DEFAULT_SESSION_MEMORY
    agent_memory_bytes: int = DEFAULT_AGENT_MEMORY
    # "fd" or "thread" (agent/serial/backend.py); unset: fd where it runs, else thread.
    serial_backend: str | None = None
    monitor_grace_seconds: int = DEFAULT_MONITOR_GRACE
    monitor_ring_bytes: int = DEFAULT_MONITOR_RING

    # Names the rest of the code uses; the file's keys are the field names above.
    @property
    def port_globs(self) -> list[str]:
        return self.port_glob

    @port_globs.setter
    def port_globs(self, value: list[str]) -> None:
        self.port_glob = Globs(list(value))

    @property
    def uploaders(self) -> list[UploaderConfig]:
        return self.uploader


# Older spellings still read, each mapped to its key.
ALIASES = {"port_globs": "port_glob"}


def load(home: Path) -> AgentConfig:
    """The agent's config from ``home/agent.toml``; defaults when the file is absent."""
    path = home / CONFIG_FILE
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return AgentConfig()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(raw, path)


def parse(raw: dict[str, Any], path: Path = Path(CONFIG_FILE)) -> AgentConfig:
    for old, new in ALIASES.items():
        if old in raw:
            if new in raw:
                raise ConfigError(f"{path}: give '{new}' once (it is also spelled '{old}')")
            raw = {**{k: v for k, v in raw.items() if k != old}, new: raw[old]}
    config = _table(raw, path)
    if config.max_upload_bytes <= 0:
        raise ConfigError(f"{path}: max_upload_bytes must be a positive number of bytes")
    for key in (
        "handshake_timeout",
        "max_pending_handshakes",
        "max_pending_handshakes_per_account",
    ):
        if getattr(config, key) < 1:
            raise ConfigError(f"{path}: {key} must be at least 1")
    for i, up in enumerate(config.uploader, 1):
        _check_placeholders(path, f"[[uploader]] {i} command", up.command)
        if up.test_port is not None:
            _check_placeholders(path, f"[[uploader]] {i} test_port", up.test_port)
    if config.remote_build_sandbox not in SANDBOXES:
        raise ConfigError(
            f"{path}: remote_build_sandbox must be one of {', '.join(map(repr, SANDBOXES))}, "
            f"not {config.remote_build_sandbox!r}"
        )
    for key in ("remote_build_cpu_seconds", "remote_build_timeout"):
        if getattr(config, key) <= 0:
            raise ConfigError(f"{path}: {key} must be a positive number of seconds")
    _check_budgets(config, path)
    if config.serial_backend is not None:
        try:
            backend.choose(config.serial_backend)
        except ValueError as exc:
            raise ConfigError(f"{path}: serial_backend: {exc}") from None
    _check_power(config, path)
    for i, fwd in enumerate(config.forward, 1):
        for target in fwd.allow:
            host, sep, port = target.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(
                    f"{path}: [[forward]] {i} allow: {target!r} is not 'host:port' "
                    '(for example "127.0.0.1:3333")'
                )
    return config


def _check_placeholders(path: Path, where: str, text: str) -> None:
    """A misspelt placeholder (``$UPLOAD_PRT``) stops the agent now, not at the first upload.

    The command runs without a shell, so a ``$NAME`` that is no placeholder reaches
    the program as it is written: one that looks like a placeholder is a typo. Others
    (``$1`` or ``$HOME`` in a ``sh -c`` script, say) are the shell's business.
    """
    known = [*PLACEHOLDERS, UPLOAD_FLAGS]
    for m in _DOLLAR_NAME.finditer(text):
        name = m.group(1) or m.group(2)
        if name in known:
            continue
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.6)
        prefixed = [k for k in known if name.upper().startswith(k.split("_")[0] + "_")]
        if close or prefixed or name.upper() in known:
            guess = (close or prefixed or [name.upper()])[0]
            raise ConfigError(
                f"{path}: {where}: unknown placeholder '{m.group(0)}' (did you mean "
                f"'${guess}'?); placeholders: {', '.join('$' + k for k in known)}"
            )


def _check_power(config: AgentConfig, path: Path) -> None:
    """``$PORT`` is the one placeholder of a power command; a reset style is one we know."""
    for i, entry in enumerate(config.power, 1):
        for key in ("on", "off"):
            text = getattr(entry, key)
            if not text.strip():
                raise ConfigError(f"{path}: [[power]] {i} {key}: the command is empty")
            for m in _DOLLAR_NAME.finditer(text):
                name = m.group(1) or m.group(2)
                if name != "PORT" and difflib.get_close_matches(name.upper(), ["PORT"], cutoff=0.6):
                    raise ConfigError(
                        f"{path}: [[power]] {i} {key}: unknown placeholder '{m.group(0)}' "
                        "(did you mean '$PORT'?)"
                    )
        if not 0 <= entry.cycle_delay_ms <= 600_000 or not 0 < entry.timeout <= 3600:
            raise ConfigError(
                f"{path}: [[power]] {i}: cycle_delay_ms must be 0..600000 and timeout 1..3600"
            )
    for i, entry in enumerate(config.reset, 1):
        if entry.style not in RESET_STYLES:
            raise ConfigError(
                f"{path}: [[reset]] {i} style must be one of "
                f"{', '.join(map(repr, RESET_STYLES))}, not {entry.style!r}"
            )
        if not 1 <= entry.pulse_ms <= 10_000:
            raise ConfigError(f"{path}: [[reset]] {i} pulse_ms must be between 1 and 10000")


def _check_budgets(config: AgentConfig, path: Path) -> None:
    """Budgets that cannot work stop the agent at start, not a client's call later."""
    if config.client_disk_quota_bytes <= 0:
        raise ConfigError(f"{path}: client_disk_quota_bytes must be a positive number of bytes")
    if config.agent_disk_cap_bytes < config.client_disk_quota_bytes:
        raise ConfigError(
            f"{path}: agent_disk_cap_bytes ({config.agent_disk_cap_bytes}) must be at least "
            f"client_disk_quota_bytes ({config.client_disk_quota_bytes})"
        )
    if config.session_memory_bytes < MIN_SESSION_MEMORY:
        raise ConfigError(
            f"{path}: session_memory_bytes must be at least {MIN_SESSION_MEMORY} (2 MiB): "
            "a call's window of 1 MiB, with room for a second"
        )
    if config.monitor_grace_seconds < 0:
        raise ConfigError(f"{path}: monitor_grace_seconds must be 0 (no resume) or more")
    if config.monitor_ring_bytes < 1024:
        raise ConfigError(f"{path}: monitor_ring_bytes must be at least 1024")
    if config.agent_memory_bytes < config.session_memory_bytes:
        raise ConfigError(
            f"{path}: agent_memory_bytes ({config.agent_memory_bytes}) must be at least "
            f"session_memory_bytes ({config.session_memory_bytes})"
        )


def _table(raw: object, path: Path) -> AgentConfig:
    """The file's table checked against ``AgentConfig``, or one line naming the key."""
    try:
        return AgentConfig(**schema.check_table(schema.dataclass_fields(AgentConfig), raw))
    except schema.UnknownKey as exc:
        hint = schema.suggest(exc.key.rpartition(".")[2], [*exc.known, *ALIASES])
        known = ", ".join(exc.known)
        raise ConfigError(f"{path}: unknown key '{exc.key}'{hint}; known keys: {known}") from None
    except schema.MissingKey as exc:
        raise ConfigError(f"{path}: {exc.key or 'the file'} needs '{exc.name}'") from None
    except schema.WrongType as exc:
        got = schema.show(exc.value, table="a table")
        raise ConfigError(
            f"{path}: {exc.key or 'the file'} must be {exc.expected}, not {got}"
        ) from None
