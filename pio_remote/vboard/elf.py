"""Sanity checks for firmware images before they are flashed onto a virtual board.

The uploader refuses anything QEMU's ``-kernel`` loader would misread, so a user who
points it at the wrong build artefact gets a clear message instead of a silent hang.
"""

from __future__ import annotations

import struct

EM_ARM = 40
ET_EXEC = 2
PT_LOAD = 1
FLASH_BASE = 0x0000_0000
FLASH_SIZE = 256 * 1024
RAM_BASE = 0x2000_0000
RAM_SIZE = 64 * 1024

_MACHINES = {
    0: "none",
    3: "x86",
    8: "MIPS",
    20: "PowerPC",
    40: "ARM",
    62: "x86-64",
    94: "Xtensa",
    183: "AArch64",
    243: "RISC-V",
}
_TYPES = {0: "none", 1: "relocatable object", 2: "executable", 3: "shared object", 4: "core"}


def is_arm_elf(data: bytes) -> str | None:
    """Return why ``data`` is not a 32-bit little-endian ARM executable, or None if it is."""
    if data[:4] != b"\x7fELF":
        return f"not an ELF file (starts with {data[:4]!r}, expected b'\\x7fELF')"
    if len(data) < 52:
        return f"truncated ELF file ({len(data)} bytes, the header alone is 52)"
    if data[4] != 1:
        kind = "64-bit (ELFCLASS64)" if data[4] == 2 else f"unknown class {data[4]}"
        return f"ELF is {kind}, expected 32-bit (ELFCLASS32) for a Cortex-M board"
    if data[5] != 1:
        kind = "big-endian" if data[5] == 2 else f"of unknown byte order {data[5]}"
        return f"ELF is {kind}, expected little-endian"
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if e_machine != EM_ARM:
        name = _MACHINES.get(e_machine, "unknown")
        return f"ELF e_machine is {e_machine} ({name}), expected {EM_ARM} (ARM)"
    if e_type != ET_EXEC:
        name = _TYPES.get(e_type, "unknown")
        return f"ELF e_type is {e_type} ({name}), expected {ET_EXEC} (executable)"
    return _check_segments(data)


def _check_segments(data: bytes) -> str | None:
    """Check the loadable segments fit the LM3S6965 memory map."""
    (e_phoff,) = struct.unpack_from("<I", data, 28)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 42)
    if e_phnum == 0:
        return "ELF has no program headers, nothing to load into flash"
    if e_phentsize < 32 or e_phoff + e_phnum * e_phentsize > len(data):
        return "ELF program header table is truncated or malformed"
    loaded = 0
    for i in range(e_phnum):
        p_type, p_offset, _vaddr, p_paddr, p_filesz = struct.unpack_from(
            "<IIIII", data, e_phoff + i * e_phentsize
        )
        if p_type != PT_LOAD or p_filesz == 0:
            continue
        if p_offset + p_filesz > len(data):
            return f"ELF segment {i} extends past the end of the file"
        in_flash = FLASH_BASE <= p_paddr and p_paddr + p_filesz <= FLASH_BASE + FLASH_SIZE
        in_ram = RAM_BASE <= p_paddr and p_paddr + p_filesz <= RAM_BASE + RAM_SIZE
        if not (in_flash or in_ram):
            return (
                f"ELF segment {i} at 0x{p_paddr:08x} (+{p_filesz} bytes) does not fit "
                f"the board's 256 KiB flash at 0x{FLASH_BASE:08x}"
            )
        loaded += 1
    if loaded == 0:
        return "ELF has no loadable segments"
    return None
