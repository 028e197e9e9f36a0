"""PlatformIO's ``${section.option}`` references in a client's platformio.ini, expanded here.

The agent never hands PlatformIO a reference to expand (``iniwriter`` writes only
what this module produced), so what PlatformIO finally sees is exactly what the
agent checked. Expansion runs under a budget: a depth limit (a reference loop,
or a chain too deep to be a real project) and a size limit per value, so that a
file of a few kilobytes whose references multiply (``l1 = ${x.l0}${x.l0}...``,
four levels of fifty) cannot make the agent build gigabytes of text or spend
minutes on it. Each expanded option is remembered, so time follows output size.

Pure code: parsing and expansion, no files, no trio.
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Mapping
from dataclasses import dataclass

# A reference: ${section.option}. Sections may be "env:NAME", "this", "env" or any other
# section of the file; SCons's own ${SOURCE.dir} and friends are left alone.
REFERENCE = re.compile(r"\$\{([^${}\s.()]+)\.([^${}\s]+)\}")
SCONS_NODES = frozenset({"SOURCE", "SOURCES", "TARGET", "TARGETS"})
# configparser treats [DEFAULT] as defaults for every section; this name (not a valid
# section header) makes it an ordinary section that nothing reads unless asked to.
_NO_DEFAULTS = "\x00no-defaults"


class IniError(Exception):
    """The client's platformio.ini cannot be used here; the message names the option."""


@dataclass(frozen=True)
class Budget:
    """How much expanding one client's platformio.ini may cost."""

    max_depth: int = 8  # references inside references
    max_value_chars: int = 64 * 1024  # one expanded value
    max_total_chars: int = 1024 * 1024  # everything expanded for one file
    max_lookups: int = 100_000  # sections visited following ``extends``


def parse_sections(text: str) -> dict[str, dict[str, str]]:
    """Every section of the file as written, ``[DEFAULT]`` as a plain section of its own.

    No interpolation and no default inheritance: configparser's DEFAULT would
    otherwise leak into every section (and be invisible to ``remove_option``).
    """
    parser = configparser.ConfigParser(
        interpolation=None,
        inline_comment_prefixes=(";", "#"),
        strict=False,
        default_section=_NO_DEFAULTS,
    )
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise IniError(f"not a valid ini file: {str(exc).splitlines()[0]}") from None
    return {s: {o: parser.get(s, o) or "" for o in parser.options(s)} for s in parser.sections()}


def split_list(value: str) -> list[str]:
    """PlatformIO's list syntax: items split on commas and line breaks."""
    return [item.strip() for item in re.split(r"[,\n]", value) if item.strip()]


class Expander:
    """Resolves options of ``[env:NAME]`` sections and expands references, within a budget."""

    def __init__(
        self,
        sections: Mapping[str, Mapping[str, str]],
        budget: Budget = Budget(),
        dirs: Mapping[str, str] | None = None,
    ):
        self.sections = sections
        self.budget = budget
        self.dirs = dirs or {}
        self.spent = 0
        self.lookups = 0
        self._done: dict[tuple[str, str, str], str] = {}

    def raw(self, section: str, option: str) -> str | None:
        """An option's own value: env sections inherit ``extends`` chains, then ``[env]``.

        ``${platformio.*_dir}`` are the directories PlatformIO uses *here* (``dirs``),
        whatever the client's ``[platformio]`` says: the written file sets none.
        """
        if section == "platformio" and (option in self.dirs or option.endswith("_dir")):
            return self.dirs.get(option)
        if not section.startswith("env:"):
            return self.sections.get(section, {}).get(option)
        value = self._inherited(section, option, (section,))
        return self.sections.get("env", {}).get(option) if value is None else value

    def _inherited(self, section: str, option: str, seen: tuple[str, ...]) -> str | None:
        self.lookups += 1
        if self.lookups > self.budget.max_lookups:
            raise IniError(f"[{section}] extends: too many sections to follow")
        own = self.sections.get(section, {})
        if option in own:
            return own[option]
        for parent in split_list(own.get("extends", "")):
            if parent in seen or len(seen) > self.budget.max_depth:
                raise IniError(f"[{section}] extends: a loop or a chain deeper than allowed")
            value = self._inherited(parent, option, (*seen, parent))
            if value is not None:
                return value
        return None

    def options(self, env: str) -> list[str]:
        """The option names ``[env:ENV]`` has, its own, inherited or from ``[env]``."""
        self._inherited(f"env:{env}", "\x00", (f"env:{env}",))  # refuses extends loops
        names: dict[str, None] = {}
        pending, seen = [f"env:{env}"], set()
        while pending:
            section = pending.pop(0)
            if section in seen or len(seen) > self.budget.max_depth + 1:
                continue
            seen.add(section)
            own = self.sections.get(section, {})
            names.update(dict.fromkeys(own))
            pending.extend(split_list(own.get("extends", "")))
        names.update(dict.fromkeys(self.sections.get("env", {})))
        return list(names)

    def get(self, env: str, option: str) -> str | None:
        """``[env:ENV] option`` with every reference expanded, or None if it is not set."""
        return self._option(env, f"env:{env}", option, 0)

    def _option(self, env: str, section: str, option: str, depth: int) -> str | None:
        key = (env, section, option)
        if key in self._done:
            return self._done[key]
        raw = self.raw(section, option)
        if raw is None:
            return None
        value = self.expand(raw, env, f"[{section}] {option}", depth)
        self._done[key] = value
        return value

    def expand(self, value: str, env: str, where: str, depth: int = 0) -> str:
        if "${" not in value:
            return value
        if depth >= self.budget.max_depth:
            raise IniError(
                f"{where}: references nested more than {self.budget.max_depth} deep "
                "(a reference loop?): expand some of them in platformio.ini"
            )
        parts: list[str] = []
        size = pos = 0
        for m in REFERENCE.finditer(value):
            part = self._reference(m, env, where, depth)
            parts += [value[pos : m.start()], part]
            size += m.start() - pos + len(part)
            pos = m.end()
            self._charge(size, where)
        parts.append(value[pos:])
        self._charge(size + len(value) - pos, where)
        out = "".join(parts)
        self.spent += len(out)
        if self.spent > self.budget.max_total_chars:
            raise IniError(
                f"{where}: references expand to more than {self.budget.max_total_chars} "
                "characters in all, which the agent does not expand"
            )
        return out

    def _charge(self, size: int, where: str) -> None:
        if size > self.budget.max_value_chars:
            raise IniError(
                f"{where}: references expand to more than {self.budget.max_value_chars} "
                "characters, which the agent does not expand"
            )

    def _reference(self, m: re.Match[str], env: str, where: str, depth: int) -> str:
        section, option = m.group(1), m.group(2)
        if section in SCONS_NODES:
            return m.group(0)  # SCons's ${SOURCE.dir}: not PlatformIO's
        if section == "sysenv":
            raise IniError(
                f"{where} uses {m.group(0)}, which the agent does not resolve (its "
                "environment is not the client's): update pio-remote on the client, "
                "which resolves it before sending"
            )
        if section == "this":
            if option == "__env__":
                return env
            section = f"env:{env}"
        value = self._option(env, section, option, depth + 1)
        if value is None:
            raise IniError(f"{where}: {m.group(0)} names no option of this platformio.ini")
        return value
