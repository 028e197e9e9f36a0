"""The platformio.ini the agent hands to PlatformIO: written here, from an allow-list.

A client's platformio.ini is the client's code as much as its sources are:
``extra_scripts``, ``!command`` build flags, ``[platformio]`` paths, a platform
from ``symlink://``, ``[DEFAULT]`` options that configparser copies into every
section. Removing the dangerous options one by one (a blacklist) missed some of
each. So the agent never passes the client's file on: it reads the options an
upload, a test or a build needs, one name at a time (``ALLOWED``), expands their
references itself (``iniexpand``), checks each value, and writes a new file with
one flat ``[env:NAME]`` section per environment. Anything else is left out and
named in the agent's log. docs/security.md lists the options and why.

Pure code: text in, text out.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from pio_remote.agent.jobs.iniexpand import Budget, Expander, IniError, parse_sections, split_list

ENV_NAME = re.compile(r"^(?!\.+$)[A-Za-z0-9_.\-]+$")
# A registry package: name, owner/name, either with @version. Never a URL, a scheme
# (symlink://, file://), a path (/x, ./x, ~/x, ..) or a git address (host:repo).
PACKAGE_SPEC = re.compile(
    r"^(?P<name>[A-Za-z0-9_][A-Za-z0-9 _.+\-]*(?:/[A-Za-z0-9_][A-Za-z0-9 _.+\-]*)?)"
    r"(?:\s*@\s*[A-Za-z0-9_.+\-^~<>=!* ]+)?$"
)
NAME = re.compile(r"^[A-Za-z0-9_.+\-]+$")
_OPTION_NAME = re.compile(r"^[A-Za-z0-9_.]+$")
NUMBER = re.compile(r"^[0-9]+$")
# C0 controls but tab and line feed (value lines), DEL, C1, Unicode line separators.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_SECTION_REF = re.compile(r"\$\{([^${}\s.()]+)\.")
_SCONS_BRACED = re.compile(r"\$\{([^}]*)\}")
_SCONS_NAME = re.compile(r"\$([A-Za-z_]\w*)")
_PLAIN_NAME = re.compile(r"^[A-Za-z_]\w*$")
_NODE_ATTR = re.compile(r"^(SOURCE|SOURCES|TARGET|TARGETS)\.[A-Za-z_]\w*$")
AGENT_ENV_NAMES = frozenset({"ENV"})  # SCons's $ENV: the agent's environment


@dataclass(frozen=True)
class Option:
    """How a value of an allowed option is checked, and why the option is allowed."""

    kind: str  # "spec" | "specs" | "name" | "names" | "number" | "text" | "filter" | "scripts"
    why: str
    commands: bool = False  # written only if the owner allowed client commands


ALLOWED: dict[str, Option] = {
    "platform": Option("spec", "selects the installed platform whose uploader runs"),
    "board": Option("name", "the board's upload settings (protocol, speed, offsets)"),
    "framework": Option("names", "part of the build and of some uploaders' settings"),
    "upload_speed": Option("number", "baud rate of serial uploaders"),
    "upload_protocol": Option("name", "which of the platform's uploaders runs"),
    "upload_resetmethod": Option("name", "how esptool resets an ESP8266"),
    "upload_flags": Option("text", "arguments to the uploader, which may name files", True),
    "upload_command": Option("text", "a command line (upload_protocol = custom)", True),
    "extra_scripts": Option("scripts", "Python that PlatformIO runs", True),
    "build_type": Option("name", "release, debug or test"),
    "build_flags": Option("text", "compiler flags for a remote build; no !command"),
    "build_src_flags": Option("text", "compiler flags for the project's sources"),
    "src_build_flags": Option("text", "build_src_flags' old name"),
    "build_unflags": Option("text", "flags removed from the build"),
    "build_src_filter": Option("filter", "which sources build; inside the project"),
    "src_filter": Option("filter", "build_src_filter's old name"),
    "lib_deps": Option("specs", "registry libraries; no URL, path or git address"),
    "lib_ignore": Option("text", "library names not to build"),
    "lib_ldf_mode": Option("name", "how dependencies are found"),
    "lib_compat_mode": Option("name", "which libraries are compatible"),
    "lib_archive": Option("name", "whether libraries are archived"),
    "test_framework": Option("name", "unity or another registry test framework"),
    "test_filter": Option("text", "which test suites build"),
    "test_ignore": Option("text", "which test suites do not build"),
    "test_build_src": Option("name", "whether src/ builds with the tests"),
    "test_speed": Option("number", "baud rate of the test output"),
    "monitor_speed": Option("number", "the default test_speed"),
}
# board_build.mcu, board_upload.speed, ...: a board's settings, overridden per project.
ALLOWED_PREFIXES: dict[str, Option] = {
    "board_build.": Option("text", "the board's build settings (mcu, f_cpu, flash mode)"),
    "board_upload.": Option("text", "the board's upload settings (speed, offsets, size)"),
}
# A real platformio.ini is a few KiB; this bounds parsing as the budget bounds expanding.
MAX_INI_CHARS = 256 * 1024
HEADER = (
    "; Written by the pio-remote agent from the client's platformio.ini: only the\n"
    "; allow-listed options, references expanded (docs/security.md).\n"
)


@dataclass
class AgentIni:
    """The file PlatformIO runs, what each environment resolved to, and what was left out."""

    text: str
    values: dict[str, dict[str, str]] = field(default_factory=dict)  # env -> option -> value
    left_out: list[str] = field(default_factory=list)  # "[env:x] extra_scripts", for the log

    def client_command(self, env: str) -> str | None:
        """The project's own upload command (``upload_protocol = custom``), if it has one."""
        values = self.values.get(env, {})
        if values.get("upload_protocol", "").strip() != "custom":
            return None
        return values.get("upload_command", "").strip() or None


def allowed(option: str) -> Option | None:
    if option in ALLOWED:
        return ALLOWED[option]
    if not _OPTION_NAME.match(option):
        return None
    return next((o for p, o in ALLOWED_PREFIXES.items() if option.startswith(p)), None)


def write_agent_ini(
    text: str,
    *,
    allow_client_commands: bool,
    envs: Iterable[str] | None = None,
    local_paths: Collection[str] = (),
    dirs: Mapping[str, str] | None = None,
    budget: Budget = Budget(),
) -> AgentIni:
    """The platformio.ini for ``envs`` (every ``[env:NAME]`` if None), or IniError.

    ``local_paths`` are the files and directories of the project the file goes with:
    a package spec that names one of them would make PlatformIO load it from there.
    ``dirs`` are the values of ``${platformio.*_dir}`` on this machine.
    """
    if len(text) > MAX_INI_CHARS:
        raise IniError(
            f"it is {len(text)} characters, more than the {MAX_INI_CHARS} the agent reads"
        )
    sections = parse_sections(text)
    expander = Expander(sections, budget, dirs)
    present = [s[4:] for s in sections if s.startswith("env:")]
    result = AgentIni("")
    if envs is None:
        chosen = [e for e in present if ENV_NAME.match(e)]
        bad = [e for e in present if e not in chosen]
        result.left_out += [f"[env:{e}] (not an environment name)" for e in bad]
    else:
        chosen = list(envs)
        for env in chosen:
            if env not in present or not ENV_NAME.match(env):
                raise IniError(f"it defines no [env:{env}] section")
    result.left_out += _unreferenced(sections)
    out = [HEADER]
    for env in chosen:
        try:
            out.append(_write_env(expander, env, allow_client_commands, local_paths, result))
        except IniError as exc:
            if envs is not None:
                raise
            # A whole project is written at sync: one bad environment must not stop
            # the others. Building this one reads the file again and fails with exc.
            result.values.pop(env, None)
            result.left_out.append(f"[env:{env}] ({exc})")
    if "platformio" in sections and sections["platformio"]:
        result.left_out.append("[platformio] " + ", ".join(sections["platformio"]))
    result.text = "".join(out)
    return result


def _write_env(
    expander: Expander,
    env: str,
    allow_commands: bool,
    local_paths: Collection[str],
    result: AgentIni,
) -> str:
    """One flat ``[env:NAME]`` section: its allowed options, expanded and checked."""
    values: dict[str, str] = {}
    out = [f"[env:{env}]\n"]
    for option in expander.options(env):
        spec = allowed(option)
        if option == "extends":
            continue  # flattened: every inherited option is written in place
        if spec is None:
            result.left_out.append(f"[env:{env}] {option}")
            continue
        value = (expander.get(env, option) or "").strip()
        check_value(option, value, spec, allow_commands, local_paths)
        values[option] = value
        if spec.commands and not allow_commands:
            result.left_out.append(f"[env:{env}] {option}")
            continue
        out.append(format_option(option, value))
    result.values[env] = values
    return "".join(out) + "\n"


def _unreferenced(sections: dict[str, dict[str, str]]) -> list[str]:
    """Sections that are neither environments nor referenced or extended by any option."""
    used = {
        m[1] for opts in sections.values() for v in opts.values() for m in _SECTION_REF.finditer(v)
    }
    used.update(p for opts in sections.values() for p in split_list(opts.get("extends", "")))
    return [
        f"[{s}]"
        for s in sections
        if s not in ("env", "platformio") and not s.startswith("env:") and s not in used
    ]


def format_option(option: str, value: str) -> str:
    """``option = value``; further lines of a value as indented continuation lines."""
    first, *rest = [line.strip() for line in value.split("\n") if line.strip()] or [""]
    return f"{option} = {first}\n" + "".join(f"    {line}\n" for line in rest)


def check_value(
    option: str, value: str, spec: Option, allow_commands: bool, local_paths: Collection[str]
) -> None:
    """Refuse a value PlatformIO could turn into a command, a path or a download here."""
    where = f"option {option}"
    if _CONTROL.search(value):
        raise IniError(f"{where} holds a control character")
    items = split_list(value)
    if not allow_commands:
        if any(item.startswith("!") for item in items):
            raise IniError(
                f"{where} holds a !command, which the agent does not run (its owner can "
                "allow client commands with --allow-client-commands)"
            )
        _check_scons(where, value)
    if spec.kind in ("spec", "specs"):
        if spec.kind == "spec" and len(items) > 1:
            raise IniError(f"{where} names more than one package")
        for item in items:
            m = PACKAGE_SPEC.match(item)
            if m is None:
                raise IniError(
                    f"{where}: {item!r} is not a registry package (name, owner/name or "
                    "name@version): the agent installs no URL, path or git address"
                )
            name = m["name"].strip()
            if name in local_paths or name.split("/")[0] in local_paths:
                raise IniError(f"{where}: {item!r} names a path in the project, not a package")
    elif spec.kind in ("name", "names", "number"):
        pattern = NUMBER if spec.kind == "number" else NAME
        if any(not pattern.match(item) for item in items) or (
            spec.kind != "names" and len(items) > 1
        ):
            raise IniError(f"{where}: {value!r} is not a {spec.kind.rstrip('s')}")
    elif spec.kind == "filter":
        for path in re.findall(r"<([^>]*)>", value):
            _check_relative(where, path)
    elif spec.kind == "scripts":
        for item in items:
            _check_relative(where, re.sub(r"^(pre|post):", "", item))


def _check_relative(where: str, path: str) -> None:
    if path.startswith(("/", "~", "\\")) or ".." in re.split(r"[/\\]", path) or ":" in path:
        raise IniError(f"{where}: {path!r} is not a path inside the project")


def _check_scons(where: str, value: str) -> None:
    """SCons expands $NAME and evaluates ${...} as Python: plain variables only, not $ENV."""
    for name in _SCONS_NAME.findall(value):
        if name in AGENT_ENV_NAMES:
            raise IniError(f"{where}: ${name} would read the agent's environment")
    for inner in _SCONS_BRACED.findall(value):
        if (_PLAIN_NAME.match(inner) and inner not in AGENT_ENV_NAMES) or _NODE_ATTR.match(inner):
            continue
        raise IniError(
            f"{where}: ${{{inner}}} is not a ${{section.option}} reference; the agent does "
            "not evaluate expressions from a client (its owner can allow them with "
            "--allow-client-commands)"
        )
