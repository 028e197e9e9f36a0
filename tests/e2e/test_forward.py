"""`device forward`: pyserial's rfc2217:// client drives a remote pty through the relay."""

from __future__ import annotations

import termios
import time
from collections.abc import Callable

import pytest
import serial
from conftest import PY, Proc
from monitorkit import line_speed, make_lab

# pyserial's rfc2217 client uses Thread.setDaemon(); not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_pyserial_over_rfc2217_changes_baud_and_moves_bytes(tmp_path):
    world, lab = make_lab(tmp_path, pair=False)
    try:
        refused = lab.desk.cli(
            "-a",
            "lab-pi",
            "device",
            "forward",
            "-p",
            "/dev/nope",
            "--listen",
            "127.0.0.1:0",
            check=False,
        )
        assert refused.returncode == 1
        assert "offers no port '/dev/nope'" in refused.stderr, refused.stderr

        link = lab.device("echo", "fwd-echo")
        fwd = Proc(
            [
                PY,
                "-m",
                "pio_remote",
                "-a",
                "lab-pi",
                "device",
                "forward",
                "-p",
                str(link),
                "--listen",
                "127.0.0.1:0",
            ],
            lab.desk.env,
        )
        world.procs.append(fwd)
        port = int(fwd.wait_for(r"as rfc2217://127\.0\.0\.1:(\d+)").group(1))
        url = f"rfc2217://127.0.0.1:{port}"

        with serial.serial_for_url(url, baudrate=115200, timeout=5) as ser:
            assert eventually(lambda: line_speed(link) == termios.B115200)
            ser.write(b"ping\r\n")
            assert ser.read_until(b"ping\r\n") == b"ping\r\n"
            every_byte = bytes(range(256)) * 16  # 0xFF is telnet's IAC: escaped both ways
            ser.write(every_byte)
            assert ser.read(len(every_byte)) == every_byte

            ser.baudrate = 57600
            assert eventually(lambda: line_speed(link) == termios.B57600)
            ser.dtr = False  # a pty has no DTR: the agent warns, the session goes on
            ser.write(b"still\r\n")
            assert ser.read_until(b"still\r\n") == b"still\r\n"

        # The port was released with the connection: the next tool gets it at once.
        with serial.serial_for_url(url, baudrate=9600, timeout=5) as again:
            again.write(b"x")
            assert again.read(1) == b"x"
            assert eventually(lambda: line_speed(link) == termios.B9600)
    finally:
        lab.stop_devices_and_monitors()
        world.close()
    stderr = fwd.stderr_tail()
    assert "no DTR" in stderr, stderr
