"""Real PlatformIO Core for the tests, offline: a core directory an owner could have.

PlatformIO (and SCons) come from the test extras, in this venv. The core
directory holds ``tool-scons`` (a ``scons.py`` that runs the PyPI ``scons`` of
this venv, so nothing is downloaded) and one platform, ``hostgcc``, installed
the way an owner installs a platform (``pio pkg install -g -p file://...``): its
builder compiles with the host's gcc. Test projects name it as
``platform = hostgcc``, ``board = hostboard``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
PIO = VENV_BIN / "pio"
SCONS_VERSION = "4.41101.0"

# Never the network: no telemetry, no update or prune checks, no download cache.
OFFLINE = {
    "PLATFORMIO_SETTING_ENABLE_TELEMETRY": "no",
    "PLATFORMIO_SETTING_CHECK_PLATFORMIO_INTERVAL": "3650",
    "PLATFORMIO_SETTING_CHECK_PRUNE_SYSTEM_THRESHOLD": "0",
    "PLATFORMIO_SETTING_ENABLE_CACHE": "no",
    "PLATFORMIO_DISABLE_PROGRESSBAR": "true",
}

PLATFORM_PY = """\
from platformio.public import PlatformBase


class HostgccPlatform(PlatformBase):
    pass
"""

# Builds with the host's gcc; `-t nobuild -t upload` runs the project's upload_command
# (upload_protocol = custom), as PlatformIO's own platforms do.
BUILDER = """\
from os.path import join

from SCons.Script import COMMAND_LINE_TARGETS, AlwaysBuild, DefaultEnvironment

env = DefaultEnvironment()
env.Replace(
    CC="/usr/bin/gcc", LINK="/usr/bin/gcc", AR="/usr/bin/ar", RANLIB="/usr/bin/ranlib",
    PROGNAME="firmware", PROGSUFFIX=".bin",
)
if "nobuild" in COMMAND_LINE_TARGETS:
    program = join("$BUILD_DIR", "${PROGNAME}${PROGSUFFIX}")
else:
    program = env.BuildProgram()
AlwaysBuild(env.Alias("nobuild", program))
env.Default(program)
AlwaysBuild(env.Alias("upload", program, env.VerboseAction("$UPLOADCMD", "Uploading $SOURCE")))
"""

BOARD = {
    "name": "Host board",
    "url": "https://example.invalid/hostboard",
    "vendor": "pio-remote tests",
    "frameworks": [],
    "build": {"mcu": "host", "f_cpu": "1L"},
    "upload": {"maximum_size": 100_000_000, "maximum_ram_size": 100_000_000},
}


@dataclass(frozen=True)
class PlatformIO:
    core_dir: Path

    @property
    def env(self) -> dict[str, str]:
        """What an agent (or a test's pio) needs: this core, offline, pio on PATH."""
        return {
            **OFFLINE,
            "PLATFORMIO_CORE_DIR": str(self.core_dir),
            "PATH": f"{VENV_BIN}{os.pathsep}/usr/bin{os.pathsep}/bin",
        }


def available() -> str | None:
    """Why the real-PlatformIO tests cannot run here, or None."""
    if not PIO.exists():
        return "PlatformIO Core is not installed in this venv (pip install -e '.[test]')"
    if shutil.which("gcc") is None:
        return "gcc is not installed"
    return None


def build_core(root: Path) -> PlatformIO:
    """Lay out the core directory under ``root`` and install the hostgcc platform into it."""
    core = root / "core"
    scons = core / "packages" / "tool-scons"
    scons.mkdir(parents=True)
    (scons / "package.json").write_text(
        json.dumps({"name": "tool-scons", "version": SCONS_VERSION})
    )
    spec = {"owner": "platformio", "id": None, "name": "tool-scons", "requirements": None}
    piopm = {"type": "tool", "name": "tool-scons", "version": SCONS_VERSION, "spec": spec}
    piopm["spec"]["uri"] = None
    (scons / ".piopm").write_text(json.dumps(piopm))
    (scons / "scons.py").write_text(
        "import sys\nfrom SCons.Script.Main import main\n\nsys.exit(main())\n"
    )
    plat = root / "hostgcc"
    (plat / "builder").mkdir(parents=True)
    (plat / "boards").mkdir()
    (plat / "platform.json").write_text(
        json.dumps(
            {
                "name": "hostgcc",
                "title": "Host GCC",
                "version": "1.0.0",
                "description": "builds with the host's gcc (pio-remote tests)",
                "frameworks": {},
                "packages": {},
            }
        )
    )
    (plat / "platform.py").write_text(PLATFORM_PY)
    (plat / "builder" / "main.py").write_text(BUILDER)
    (plat / "boards" / "hostboard.json").write_text(json.dumps(BOARD))
    pio = PlatformIO(core)
    env = {**os.environ, **pio.env}
    subprocess.run(
        [str(PIO), "pkg", "install", "-g", "-p", f"file://{plat}"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return pio


def project(
    root: Path, main_c: str, ini_extra: str = "", files: dict[str, str] | None = None
) -> Path:
    """A PlatformIO project for the hostgcc platform, env ``dev``."""
    (root / "src").mkdir(parents=True)
    (root / "platformio.ini").write_text(
        f"[env:dev]\nplatform = hostgcc\nboard = hostboard\n{ini_extra}"
    )
    (root / "src" / "main.c").write_text(main_c)
    for name, text in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root
