"""Virtual board farm: QEMU-emulated Cortex-M boards on ptys, for trying pio-remote
without hardware and for end-to-end tests.

Start a farm with ``python -m pio_remote.vboard start --dir /tmp/vb --count 2`` or
:class:`BoardFarm`; flash with ``python -m pio_remote.vboard upload PORT FW.elf`` or
:func:`upload_firmware`.
"""

from typing import Any

from .client import BoardFarm, BoardInfo, PortInfo, UploadError, resolve_port, upload_firmware
from .elf import is_arm_elf
from .host import DEFAULT_FIRMWARE, FIRMWARE_DIR

FIRMWARE_V1 = FIRMWARE_DIR / "blink-v1.elf"
FIRMWARE_V2 = FIRMWARE_DIR / "blink-v2.elf"
FIRMWARE_UNITY_FAIL = FIRMWARE_DIR / "unity-fail.elf"
# blink-v1 with symbols (not stripped), for gdb: the board runs the same code.
FIRMWARE_DEBUG = FIRMWARE_DIR / "blink-debug.elf"
FIRMWARE_UNITY_HANG = FIRMWARE_DIR / "unity-hang.elf"

__all__ = [
    "DEFAULT_FIRMWARE",
    "FIRMWARE_DEBUG",
    "FIRMWARE_DIR",
    "FIRMWARE_UNITY_FAIL",
    "FIRMWARE_UNITY_HANG",
    "FIRMWARE_V1",
    "FIRMWARE_V2",
    "BoardFarm",
    "BoardInfo",
    "FarmError",
    "PortInfo",
    "UploadError",
    "is_arm_elf",
    "resolve_port",
    "run_farm",
    "upload_firmware",
]


def __getattr__(name: str) -> Any:
    """The farm itself (trio) loads on first use, so `python -m pio_remote.vboard upload`,
    which every virtual-board flash runs, does not import trio."""
    if name in ("FarmError", "run_farm"):
        from . import board

        return getattr(board, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
