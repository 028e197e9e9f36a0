"""A PlatformIO project as `run` sees it: `platformio.ini` and `.pio/build/<env>/`.

Only what uploads need is read: environments (with ``[env]`` defaults and
``extends``), the ``upload_*`` options and where the build put its artifacts. Both roles
read it: the client its project, the agent a synced copy (agent/jobs/projects.py); the
agent rewrites a client's file with ``agent.jobs.iniwriter``.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

INI = "platformio.ini"
# What PlatformIO's uploaders flash, per platform: AVR-family tools want Intel HEX;
# most others take the raw binary. Anything else falls back to .bin, then .elf.
HEX_PLATFORMS = frozenset({"atmelavr", "atmelmegaavr", "microchippic32", "teensy", "intel_mcs51"})
FIRMWARE_EXTS = (".bin", ".hex", ".elf")
# Images an upload may need next to the firmware (ESP32 bootloader and partition
# table, AVR EEPROM, file system images for uploadfs).
EXTRA_ARTIFACTS = (
    "firmware.eep",
    "bootloader*.bin",
    "partitions*.bin",
    "spiffs.bin",
    "littlefs.bin",
    "fatfs.bin",
)
# Targets that need the board, so the agent: everything else builds locally only.
BOARD_TARGETS = frozenset({"upload", "program", "uploadfs", "uploadfsota", "uploadeep", "erase"})
_INTERPOLATION = re.compile(r"\$\{([^.}\s]+)\.([^}\s]+)\}")
_SYSENV = re.compile(r"\$\{sysenv\.([^}\s]*)\}")
MAX_INTERPOLATION_DEPTH = 10


class ProjectError(Exception):
    """The project is not ready for this command; the message says how to fix it."""


def parse_list(value: str | None) -> list[str]:
    """PlatformIO's list syntax: comma- or newline-separated."""
    if not value:
        return []
    return [item.strip() for item in re.split(r"[,\n]", value) if item.strip()]


def _parser() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=(";", "#"), strict=False
    )
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    return parser


@dataclass
class ProjectConfig:
    """Parsed platformio.ini; ``get`` resolves env defaults, ``extends`` and ${...}.

    ``sysenv`` is the environment ``${sysenv.X}`` reads: the client's own. A config
    parsed on the agent from a client's file has none, so its values can never
    carry the agent's environment (secrets) back to the client.
    """

    path: Path
    parser: configparser.ConfigParser
    sysenv: Mapping[str, str] | None = field(default=None, repr=False)

    @classmethod
    def load(cls, project_dir: Path) -> ProjectConfig:
        path = project_dir / INI
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ProjectError(
                f"no {INI} in {project_dir}: run inside a PlatformIO project, pass "
                "-d/--project-dir, or give the firmware with --firmware FILE"
            ) from None
        return cls.parse(text, path, sysenv=os.environ)

    @classmethod
    def parse(
        cls, text: str, path: Path = Path(INI), *, sysenv: Mapping[str, str] | None = None
    ) -> ProjectConfig:
        parser = _parser()
        try:
            parser.read_string(text, source=str(path))
        except configparser.Error as exc:
            raise ProjectError(f"{path} is not valid: {exc}") from None
        return cls(path, parser, sysenv)

    @property
    def project_dir(self) -> Path:
        return self.path.parent

    def envs(self) -> list[str]:
        return [s[4:] for s in self.parser.sections() if s.startswith("env:")]

    def default_envs(self) -> list[str]:
        return parse_list(self._raw("platformio", "default_envs"))

    def select_envs(self, requested: list[str]) -> list[str]:
        """-e, else default_envs, else every environment; unknown names are errors."""
        known = self.envs()
        chosen = requested or self.default_envs() or known
        if not chosen:
            raise ProjectError(f"{self.path} defines no [env:NAME] section")
        for env in chosen:
            if env not in known:
                raise ProjectError(
                    f"unknown environment '{env}' in {self.path}; it defines: "
                    + (", ".join(known) or "none")
                )
        return chosen

    def _raw(self, section: str, option: str) -> str | None:
        if self.parser.has_option(section, option):
            return self.parser.get(section, option)
        return None

    def _lookup(self, section: str, option: str, seen: frozenset[str]) -> str | None:
        value = self._raw(section, option)
        if value is not None:
            return value
        for parent in parse_list(self._raw(section, "extends")):
            if parent in seen:
                raise ProjectError(f"{self.path}: [{section}] extends itself via [{parent}]")
            value = self._lookup(parent, option, seen | {parent})
            if value is not None:
                return value
        return None

    def get(self, env: str, option: str, default: str | None = None) -> str | None:
        section = f"env:{env}"
        value = self._lookup(section, option, frozenset({section}))
        if value is None:
            value = self._raw("env", option)
        return default if value is None else self.interpolate(value)

    def interpolate(self, value: str, depth: int = 0) -> str:
        if depth > MAX_INTERPOLATION_DEPTH:
            raise ProjectError(f"{self.path}: ${{...}} nested deeper than {depth} in {value!r}")

        def sub(m: re.Match[str]) -> str:
            section, option = m.group(1), m.group(2)
            if section == "sysenv":
                if self.sysenv is None:
                    raise ProjectError(f"{self.path}: {m.group(0)} cannot be resolved here")
                return self.sysenv.get(option, "")
            raw = self._raw(section, option)
            return m.group(0) if raw is None else self.interpolate(raw, depth + 1)

        return _INTERPOLATION.sub(sub, value)

    def workspace_option(self, option: str, default: Path) -> Path:
        raw = self._raw("platformio", option)
        if raw is None:
            return default
        path = Path(os.path.expanduser(self.interpolate(raw.strip())))
        return path if path.is_absolute() else self.project_dir / path

    def build_dir(self, env: str) -> Path:
        workspace = self.workspace_option("workspace_dir", self.project_dir / ".pio")
        return self.workspace_option("build_dir", workspace / "build") / env

    def client_command(self, env: str) -> str | None:
        """The upload command line a project supplies (`upload_protocol = custom`)."""
        if (self.get(env, "upload_protocol") or "").strip() != "custom":
            return None
        command = (self.get(env, "upload_command") or "").strip()
        return command or None


@dataclass(frozen=True)
class Artifacts:
    """What one environment's build produced: the firmware to flash, then the rest."""

    env: str
    source: Path
    files: list[Path]


def find_artifacts(config: ProjectConfig, env: str) -> Artifacts:
    """The firmware and extra images in the build directory, or an error naming the file."""
    build = config.build_dir(env)
    platform = (config.get(env, "platform") or "").strip()
    preferred = ".hex" if platform.split("@")[0] in HEX_PLATFORMS else ".bin"
    order = [preferred, *(e for e in FIRMWARE_EXTS if e != preferred)]
    present = [build / f"firmware{ext}" for ext in order if (build / f"firmware{ext}").is_file()]
    if not present:
        missing = _display(build / f"firmware{preferred}", config.project_dir)
        raise ProjectError(
            f"firmware {missing} is missing: build it with 'pio run -e {env}'"
            + (f" -d {config.project_dir}" if config.project_dir != Path.cwd() else "")
        )
    files = list(present)
    for pattern in EXTRA_ARTIFACTS:
        files.extend(p for p in sorted(build.glob(pattern)) if p.is_file() and p not in files)
    return Artifacts(env, present[0], files)


def _display(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        try:
            return str(path.relative_to(base))
        except ValueError:
            return str(path)


def resolve_sysenv(text: str, environ: Mapping[str, str]) -> str:
    """The client's platformio.ini with ``${sysenv.X}`` replaced by this machine's values.

    PlatformIO reads ``sysenv`` where it runs; pio-remote runs it on the agent, whose
    environment is not the client's to read. So the client resolves these before the
    file leaves it, and the agent refuses any it is sent (``iniexpand``).
    """

    def sub(m: re.Match[str]) -> str:
        value = environ.get(m.group(1), "")
        if "\n" in value or "\r" in value:
            raise ProjectError(
                f"{m.group(0)} in {INI}: the variable holds a line break, which an "
                f"{INI} value cannot hold"
            )
        return value

    return _SYSENV.sub(sub, text)
