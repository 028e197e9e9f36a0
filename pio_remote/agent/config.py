"""`agent.toml`: the owner's settings for one agent, checked against a declared schema.

Every key is a field of a dataclass below; its type says what the file may hold.
A file that breaks the schema stops the agent at start with one line naming the
file, the key and what was expected, so a typo (``prot_glob``) or a value of the
wrong kind (``max_upload_bytes = "lots"``) never silently means something else.
Every key is documented in docs/agent-config.md.

Types the checker knows: ``str``, ``int``, ``bool``, ``list[str]``, ``Globs``
(a string or a list of strings, kept as a list), ``Optional`` versions of those,
and lists of nested tables (``list[UploaderConfig]``).
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NewType, Union

from pio_remote.home import AGENT_CONFIG_FILE, ConfigError

DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024 * 1024
MIB = 1024 * 1024
# Budgets sized for a Raspberry Pi (docs/agent-config.md says why): disk on an SD
# card of 16 GB or more, memory on a board with 512 MB or more.
DEFAULT_CLIENT_DISK_QUOTA = 512 * MIB
DEFAULT_AGENT_DISK_CAP = 2048 * MIB
DEFAULT_SESSION_MEMORY = 16 * MIB
DEFAULT_AGENT_MEMORY = 64 * MIB
# A session's budget must hold a call's window plus its event reserve, or uploads crawl.
MIN_SESSION_MEMORY = 2 * MIB

# One glob or several: `ports = "/dev/ttyUSB*"` and `ports = ["/dev/ttyUSB*", "/dev/ttyACM*"]`.
Globs = NewType("Globs", list)


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


@dataclass
class AgentConfig:
    name: str | None = None
    shares: list[str] = field(default_factory=list)
    port_glob: Globs = field(default_factory=lambda: Globs([]))
    uploader: list[UploaderConfig] = field(default_factory=list)
    forward: list[ForwardConfig] = field(default_factory=list)
    allow_client_commands: bool = False
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    # `pio-remote update` from accounts the agent is shared with, not only its owner.
    allow_shared_update: bool = False
    # Budgets (docs/security.md): disk per client key and in all, client input in memory.
    client_disk_quota_bytes: int = DEFAULT_CLIENT_DISK_QUOTA
    agent_disk_cap_bytes: int = DEFAULT_AGENT_DISK_CAP
    session_memory_bytes: int = DEFAULT_SESSION_MEMORY
    agent_memory_bytes: int = DEFAULT_AGENT_MEMORY

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
    path = home / AGENT_CONFIG_FILE
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return AgentConfig()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(raw, path)


def parse(raw: dict[str, Any], path: Path = Path(AGENT_CONFIG_FILE)) -> AgentConfig:
    for old, new in ALIASES.items():
        if old in raw:
            if new in raw:
                raise ConfigError(f"{path}: give '{new}' once (it is also spelled '{old}')")
            raw = {**{k: v for k, v in raw.items() if k != old}, new: raw[old]}
    config = _table(AgentConfig, raw, path, "")
    if config.max_upload_bytes <= 0:
        raise ConfigError(f"{path}: max_upload_bytes must be a positive number of bytes")
    _check_budgets(config, path)
    for i, fwd in enumerate(config.forward, 1):
        for target in fwd.allow:
            host, sep, port = target.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(
                    f"{path}: [[forward]] {i} allow: {target!r} is not 'host:port' "
                    '(for example "127.0.0.1:3333")'
                )
    return config


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
    if config.agent_memory_bytes < config.session_memory_bytes:
        raise ConfigError(
            f"{path}: agent_memory_bytes ({config.agent_memory_bytes}) must be at least "
            f"session_memory_bytes ({config.session_memory_bytes})"
        )


def _table(cls: type, raw: object, path: Path, where: str) -> Any:
    """Build dataclass ``cls`` from a TOML table, or raise naming the offending key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {where or 'the file'} must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(key, [*fields, *ALIASES], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{path}: unknown key '{where}{key}'{hint}; known keys: {known}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}: {where.rstrip('.') or 'the file'} needs '{name}'")
            continue
        values[name] = _value(hints[name], raw[name], path, f"{where}{name}")
    return cls(**values)


def _value(kind: Any, value: object, path: Path, key: str) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return _value(inner, value, path, key)
    if kind is Globs:
        if isinstance(value, str):
            return Globs([value])
        return Globs(_value(list[str], value, path, key))
    if origin is list:
        (item,) = args
        if not isinstance(value, list):
            raise ConfigError(f"{path}: {key} must be {_describe(kind)}, not {_show(value)}")
        if dataclasses.is_dataclass(item):
            return [_table(item, v, path, f"{key}[{i}].") for i, v in enumerate(value, 1)]
        return [_value(item, v, path, f"{key}[{i}]") for i, v in enumerate(value, 1)]
    ok = {
        str: isinstance(value, str),
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
    }.get(kind)
    if ok is None:
        raise TypeError(f"no checker for {kind!r}")  # a schema bug, not the user's
    if not ok:
        raise ConfigError(f"{path}: {key} must be {_describe(kind)}, not {_show(value)}")
    return value


def _describe(kind: Any) -> str:
    if kind is Globs:
        return "a glob string or a list of them"
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        if dataclasses.is_dataclass(item):
            return "a list of tables ([[...]])"
        return f"a list of {_describe(item).removeprefix('a ').removeprefix('an ')}s"
    return {str: "a string", bool: "true or false", int: "an integer"}.get(kind, str(kind))


def _show(value: object) -> str:
    kind = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    name = kind.get(type(value), "a list" if isinstance(value, list) else "a table")
    text = repr(value)
    return f"{name} ({text[:40]}{'...' if len(text) > 40 else ''})"
