"""Choosing what to monitor: the agent, the port, and ``platformio.ini``'s monitor_* options.

Pure functions (no network, no terminal), so the rules PlatformIO users rely on
are tested directly:

* ``platformio.ini`` (read by ``project.ProjectConfig``: ``[env]`` defaults,
  ``extends``, ``${...}``): without ``-e`` the first of ``[platformio]
  default_envs`` is used, else the first ``[env:NAME]`` section, as PlatformIO does.
* Port: ``-p`` is a name or a glob; without it, the only port with a USB
  VID:PID, else the only port; anything else is an error listing candidates.
* Agent: a monitor talks to exactly one agent.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from pio_remote.project import INI, ProjectConfig, ProjectError, parse_list

MONITOR_KEYS = (
    "monitor_port",
    "monitor_speed",
    "monitor_parity",
    "monitor_filters",
    "monitor_rts",
    "monitor_dtr",
    "monitor_eol",
    "monitor_raw",
    "monitor_echo",
    "monitor_encoding",
)
GLOB_CHARS = frozenset("*?[")
# Candidates shown in an error; a lab machine with hundreds of ptys stays readable.
MAX_LISTED = 20


class ChoiceError(ValueError):
    """The user must choose (or fix a name); the message lists the candidates."""


@dataclass
class ProjectMonitor:
    """The monitor_* options of one environment, typed, with None for unset."""

    environment: str = ""
    port: str | None = None
    speed: int | None = None
    parity: str | None = None
    filters: list[str] = field(default_factory=list)
    rts: bool | None = None
    dtr: bool | None = None
    eol: str | None = None
    raw: bool | None = None
    echo: bool | None = None
    encoding: str | None = None


def _bool(key: str, value: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "yes", "true", "on", "y"):
        return True
    if text in ("0", "no", "false", "off", "n"):
        return False
    raise ProjectError(f"platformio.ini: {key} = {value!r} is not a yes/no (or 1/0) value")


def read_project(project_dir: Path, environment: str | None = None) -> ProjectMonitor | None:
    """The monitor options of ``environment`` (or the default one); None without an ini."""
    if not (project_dir / INI).is_file():
        if environment:
            raise ProjectError(f"-e {environment} given, but there is no {project_dir / INI}")
        return None
    config = ProjectConfig.load(project_dir)
    if not config.envs():
        return ProjectMonitor()
    name = config.select_envs([environment] if environment else [])[0]
    raw = {key: config.get(name, key) for key in MONITOR_KEYS}
    return _typed(name, {k: v for k, v in raw.items() if v is not None})


def _typed(name: str, raw: dict[str, str]) -> ProjectMonitor:
    out = ProjectMonitor(environment=name)
    for key, value in raw.items():
        value = value.strip()
        if key == "monitor_speed":
            try:
                out.speed = int(value)
            except ValueError:
                raise ProjectError(
                    f"platformio.ini [env:{name}]: monitor_speed = {value!r} is not a number"
                ) from None
        elif key in ("monitor_rts", "monitor_dtr", "monitor_raw", "monitor_echo"):
            setattr(out, key[8:], _bool(key, value))
        elif key == "monitor_filters":
            out.filters = [n for item in parse_list(value) for n in item.split()]
        elif key == "monitor_parity":
            out.parity = value.upper()
        elif key == "monitor_eol":
            out.eol = value.upper()
        else:
            setattr(out, key[8:], value or None)
    return out


# ---- choosing -------------------------------------------------------------------------


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" (and {len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")


def is_glob(pattern: str) -> bool:
    return any(ch in GLOB_CHARS for ch in pattern)


def choose_port(devices: list[dict[str, str]], wanted: str | None, agent: str) -> str:
    """The port to open on ``agent``, from its ``device.list`` answer."""
    names = [d["port"] for d in devices]
    if wanted and not is_glob(wanted):
        return wanted  # the agent checks that it offers it
    if wanted:
        matches = [n for n in names if fnmatch.fnmatchcase(n, wanted)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise ChoiceError(
                f"no port on agent '{agent}' matches {wanted!r}; its ports: "
                f"{_listing(names) or 'none'}"
            )
        raise ChoiceError(
            f"{len(matches)} ports on agent '{agent}' match {wanted!r}: {_listing(matches)}; "
            "pick one with -p"
        )
    if not devices:
        raise ChoiceError(
            f"agent '{agent}' offers no serial ports: plug a board in, or start the agent "
            "with --port-glob for ptys and symlinks"
        )
    usb = [d["port"] for d in devices if "VID:PID=" in d.get("hwid", "")]
    if len(usb) == 1:
        return usb[0]
    if not usb and len(names) == 1:
        return names[0]
    candidates = usb or names
    raise ChoiceError(
        f"agent '{agent}' has {len(candidates)} candidate ports: {_listing(candidates)}; "
        "pick one with -p (or monitor_port in platformio.ini)"
    )


def check_port(devices: list[dict[str, str]], port: str, agent: str) -> None:
    """Fail early (before anything connects to it) if ``agent`` does not offer ``port``."""
    names = [d["port"] for d in devices]
    if port not in names:
        raise ChoiceError(
            f"agent '{agent}' offers no port {port!r}; its ports: {_listing(names) or 'none'}"
        )


def choose_agent(requested: list[str], online: list[str]) -> str:
    """A monitor needs exactly one agent: the -a given, or the only one online."""
    if len(requested) > 1:
        raise ChoiceError(
            f"a monitor talks to one agent, but {len(requested)} were given "
            f"({', '.join(requested)}): pass a single -a"
        )
    if requested:
        return requested[0]
    if len(online) == 1:
        return online[0]
    if not online:
        raise ChoiceError(
            "no agents are online: start one with 'pio-remote agent start' on the machine "
            "with the board"
        )
    raise ChoiceError(f"{len(online)} agents are online: {_listing(online)}; pick one with -a")
