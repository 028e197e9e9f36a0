"""End-to-end tests of the virtual board farm: real processes, real ptys, real QEMU."""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import time
from pathlib import Path

import pytest
import serial
import trio

from pio_remote.vboard import (
    FIRMWARE_UNITY_FAIL,
    FIRMWARE_V1,
    FIRMWARE_V2,
    BoardFarm,
    is_arm_elf,
)
from pio_remote.vboard.host import registry_entry


def qemu_test(fn):
    """Mark a test as needing QEMU, and skip it where QEMU is missing."""
    fn = pytest.mark.skipif(
        shutil.which("qemu-system-arm") is None, reason="qemu-system-arm not installed"
    )(fn)
    return pytest.mark.qemu(fn)


UNITY_OK = (
    b"test/test_main.c:12:test_add:PASS\r\n"
    b"test/test_main.c:18:test_sub:PASS\r\n"
    b"test/test_main.c:24:test_skip:IGNORE: not on this board\r\n"
    b"-----------------------\r\n"
    b"3 Tests 0 Failures 1 Ignored\r\n"
    b"OK\r\n"
)
BOOT_V1 = b"pio-remote vboard firmware v1\r\n" + UNITY_OK
BOOT_V2 = b"pio-remote vboard firmware v2\r\n" + UNITY_OK
BOOT_FAIL = (
    b"pio-remote vboard firmware v1\r\n"
    b"test/test_main.c:12:test_add:PASS\r\n"
    b"test/test_main.c:18:test_sub:FAIL: Expected 1 Was 2\r\n"
    b"test/test_main.c:24:test_skip:IGNORE: not on this board\r\n"
    b"-----------------------\r\n"
    b"3 Tests 1 Failures 1 Ignored\r\n"
    b"FAIL\r\n"
)


def read_until(ser: serial.Serial, marker: bytes, timeout: float = 5.0) -> bytes:
    """Read up to and including ``marker`` (nothing after it), with an explicit deadline."""
    deadline = time.monotonic() + timeout
    buf = b""
    while not buf.endswith(marker):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {marker!r}, got {buf!r}")
        ser.timeout = min(left, 0.5)
        buf += ser.read(1)
    return buf


def read_exactly(ser: serial.Serial, n: int, timeout: float = 5.0) -> bytes:
    deadline = time.monotonic() + timeout
    buf = b""
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {len(buf)} of {n} bytes: {buf!r}")
        ser.timeout = min(left, 0.5)
        buf += ser.read(n - len(buf))
    return buf


def open_port(path: str) -> serial.Serial:
    return serial.Serial(path, 115200, timeout=1)


def qemu_alive(pid: int) -> bool:
    try:
        return "qemu" in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return False


@pytest.fixture
def farm(tmp_path):
    with BoardFarm(tmp_path / "vb", count=2, verbose=True) as running:
        yield running


# --- firmware checks (no QEMU needed) ---------------------------------------------------


def elf32_header(machine: int = 40, e_type: int = 2, klass: int = 1, endian: int = 1) -> bytes:
    ident = b"\x7fELF" + bytes([klass, endian, 1]) + bytes(9)
    return ident + struct.pack(
        "<HHIIIIIHHHHHH", e_type, machine, 1, 0, 0, 0, 0, 52, 32, 0, 40, 0, 0
    )


@pytest.mark.parametrize("path", [FIRMWARE_V1, FIRMWARE_V2, FIRMWARE_UNITY_FAIL])
def test_committed_firmware_is_small_arm_elf(path):
    data = path.read_bytes()
    assert is_arm_elf(data) is None
    assert len(data) < 8192


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"hello world, this is not firmware", "not an ELF file"),
        (b"\x7fELF\x01\x01", "truncated"),
        (elf32_header(klass=2), "64-bit"),
        (elf32_header(endian=2), "big-endian"),
        (elf32_header(machine=62), "e_machine is 62 (x86-64), expected 40 (ARM)"),
        (elf32_header(e_type=1), "e_type is 1 (relocatable object)"),
        (elf32_header(), "no program headers"),
    ],
)
def test_is_arm_elf_explains_rejections(data, expected):
    problem = is_arm_elf(data)
    assert problem is not None and expected in problem


def test_is_arm_elf_rejects_host_binary():
    problem = is_arm_elf(Path(sys.executable).resolve().read_bytes()[:4096])
    assert problem is not None


# --- the farm -----------------------------------------------------------------------------


@qemu_test
def test_farm_publishes_boards(farm):
    assert [b.name for b in farm.boards] == ["board0", "board1"]
    for i, board in enumerate(farm.boards):
        assert board.link == farm.directory / f"board{i}"
        assert os.path.realpath(board.link) == board.pts
        assert board.pts.startswith("/dev/pts/")
        state = farm.state(i)
        assert state["pts"] == board.pts and state["running"]
        assert qemu_alive(state["qemu_pid"])


@qemu_test
def test_open_shows_banner_and_unity_report(farm):
    with open_port(farm.port(0)) as ser:
        assert read_until(ser, b"OK\r\n") == BOOT_V1


@qemu_test
def test_every_open_resets_the_board(farm):
    boots = farm.state(0)["boots"]
    for _ in range(2):
        with open_port(farm.port(0)) as ser:
            assert read_until(ser, b"OK\r\n") == BOOT_V1
    assert farm.state(0)["boots"] >= boots + 2


@qemu_test
def test_echoes_all_byte_values_unchanged(farm):
    payload = bytes(range(256)) * 4 + b"\r\n\n\r\x00\x03\x04\x11\x13\x1a\x7f\xff"
    with open_port(farm.port(0)) as ser:
        read_until(ser, b"OK\r\n")
        ser.write(payload)
        assert read_exactly(ser, len(payload)) == payload
        ser.timeout = 0.2
        assert ser.read(1) == b""


@qemu_test
def test_input_sent_during_boot_never_garbles_the_report(farm):
    with open_port(farm.port(0)) as ser:
        ser.write(b"early")
        assert read_until(ser, b"OK\r\n") == BOOT_V1
        ser.timeout = 0.3
        # Bytes that reached the new boot are echoed after the report; bytes sent while
        # the board was still resetting are discarded, as on a real board.
        assert ser.read(5) in (b"", b"early")


@qemu_test
def test_boards_are_independent(farm):
    with open_port(farm.port(0)) as a, open_port(farm.port(1)) as b:
        read_until(a, b"OK\r\n")
        read_until(b, b"OK\r\n")
        a.write(b"to board zero")
        b.write(b"to board one")
        assert read_exactly(a, 13) == b"to board zero"
        assert read_exactly(b, 12) == b"to board one"


@qemu_test
def test_upload_new_firmware_then_reopen(farm):
    result = farm.upload(0, FIRMWARE_V2)
    assert result.returncode == 0, result.stderr
    size = FIRMWARE_V2.stat().st_size
    assert f"Writing {size} bytes to board0 ... done" in result.stdout
    assert "Verifying ... OK" in result.stdout
    stored = farm.directory / ".board0" / "firmware.elf"
    assert stored.read_bytes() == FIRMWARE_V2.read_bytes()
    with open_port(farm.port(0)) as ser:
        assert read_until(ser, b"OK\r\n") == BOOT_V2
        ser.write(b"still echoing")
        assert read_exactly(ser, 13) == b"still echoing"
    with open_port(farm.port(1)) as ser:
        assert read_until(ser, b"OK\r\n") == BOOT_V1


@qemu_test
def test_upload_resets_a_board_whose_port_is_open(farm):
    with open_port(farm.port(1)) as ser:
        read_until(ser, b"OK\r\n")
        result = farm.upload(1, FIRMWARE_UNITY_FAIL)
        assert result.returncode == 0, result.stderr
        assert read_until(ser, b"FAIL\r\n").endswith(BOOT_FAIL)


@qemu_test
def test_upload_through_pts_node(farm):
    result = farm.run_cli("upload", farm.boards[1].pts, str(FIRMWARE_V2))
    assert result.returncode == 0, result.stderr
    assert "board1" in result.stdout
    assert farm.state(1)["firmware_sha256"] != farm.state(0)["firmware_sha256"]


@qemu_test
def test_upload_rejects_non_elf_and_wrong_arch(farm, tmp_path):
    before = farm.state(0)
    text = tmp_path / "firmware.bin"
    text.write_text("definitely not an ELF\n")
    result = farm.upload(0, text)
    assert result.returncode != 0
    assert "not an ELF file" in result.stderr and str(text) in result.stderr

    x86 = tmp_path / "x86.elf"
    x86.write_bytes(elf32_header(machine=3))
    result = farm.upload(0, x86)
    assert result.returncode != 0
    assert "e_machine is 3 (x86), expected 40 (ARM)" in result.stderr

    after = farm.state(0)
    assert after["firmware_sha256"] == before["firmware_sha256"]
    assert after["boots"] == before["boots"]


@qemu_test
def test_upload_to_unknown_port_fails(farm, tmp_path):
    result = farm.run_cli("upload", str(tmp_path / "nope"), str(FIRMWARE_V2))
    assert result.returncode != 0
    assert "not a virtual board port" in result.stderr


@qemu_test
def test_second_farm_on_same_dir_is_refused(farm):
    with pytest.raises(RuntimeError, match="already served"):
        with BoardFarm(farm.directory, count=1):
            pass
    assert farm.state(0)["running"]


@qemu_test
def test_stop_leaves_nothing_behind(tmp_path):
    directory = tmp_path / "vb"
    farm = BoardFarm(directory, count=2)
    with farm:
        pids = [farm.state(i)["qemu_pid"] for i in range(2)]
        pts = [b.pts for b in farm.boards]
        assert all(qemu_alive(pid) for pid in pids)
    assert farm.proc is not None and farm.proc.returncode == 0
    assert not any(qemu_alive(pid) for pid in pids)
    assert sorted(p.name for p in directory.iterdir()) == [".farm.log"]
    assert not any(registry_entry(p).exists() for p in pts)


@qemu_test
async def test_async_farm_api(tmp_path):
    with trio.fail_after(20):
        async with BoardFarm(tmp_path / "vb", count=1) as farm:
            result = await farm.aupload(0, FIRMWARE_V2)
            assert result.returncode == 0, result.stderr

            def banner() -> bytes:
                with open_port(farm.port(0)) as ser:
                    return read_until(ser, b"OK\r\n")

            assert await trio.to_thread.run_sync(banner) == BOOT_V2
            state = json.loads((tmp_path / "vb" / ".board0" / "state.json").read_text())
            assert state["boots"] >= 2


@qemu_test
def test_flashing_the_same_image_twice_still_resets_the_board(tmp_path: Path) -> None:
    """A real board resets after every flash; an unchanged image must not hang the uploader."""
    with BoardFarm(tmp_path / "vb", count=1) as farm:
        boots = farm.state(0)["boots"]
        for _ in range(2):
            result = farm.upload(0, FIRMWARE_V1)
            assert result.returncode == 0, result.stderr
        assert farm.state(0)["boots"] >= boots + 2
