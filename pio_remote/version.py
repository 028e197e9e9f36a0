"""``--version``'s text, and what a single-file build was made for.

Both the CLI and the single-file entry point (onefile.py) show it, so it lives in
neither: onefile runs the CLI, and the CLI must not import onefile back.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pio_remote import __version__


def build_info() -> dict[str, Any] | None:
    """What the archive was built for (its ``_build.json``), or None when not running from one."""
    # shiv runs the archive from unpacked files, so __file__ is a real path here.
    try:
        with open(os.path.join(os.path.dirname(__file__), "_build.json")) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def version_text(version: str = __version__) -> str:
    """The version, and the platform and CPython of a single file."""
    info = build_info()
    if info is None:
        return version
    return f"{version} (single file for {info['platform']}, CPython {info['python']})"
