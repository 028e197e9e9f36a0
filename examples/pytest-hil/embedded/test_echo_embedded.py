"""A pytest-embedded suite that knows nothing about pio-remote: the plugin supplies --port.

    pytest examples/pytest-hil/embedded --embedded-services serial \
        --pio-remote-agent lab-pi --pio-remote-port '/dev/ttyACM*' \
        --pio-remote-firmware .pio/build/dev/firmware.elf

The board's firmware echoes what it reads (pio_remote/vboard's firmware does).
"""

from pytest_embedded import Dut


def test_echoes_a_line(dut: Dut) -> None:
    dut.write("hello board")
    dut.expect("hello board", timeout=10)


def test_echoes_another(dut: Dut) -> None:
    dut.write("ping 42 ok")
    match = dut.expect(r"ping (\d+) ok", timeout=10)
    assert match.group(1) == b"42"
