"""The pytest plugin's options, ini keys and errors, with pytester (no relay needed)."""

from __future__ import annotations

import pytest

pytest_plugins = ("pytester",)

SHOW = """
from pio_remote.pytest_hil import plugin

def test_show(pytestconfig):
    print("WANTED", plugin.wanted(pytestconfig))
"""


def test_inactive_until_configured(pytester):
    pytester.makepyfile(
        SHOW
        + """
def test_plain():
    assert True
"""
    )
    result = pytester.runpytest("-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*WANTED None"])
    assert "pio_remote.agent" not in result.stdout.str()


def test_options_are_read(pytester, tmp_path):
    image = tmp_path / "fw.elf"
    image.write_bytes(b"x")
    pytester.makepyfile(SHOW)
    result = pytester.runpytest(
        "-s",
        "--pio-remote-agent=lab",
        "--pio-remote-agent=bob/ci",
        "--pio-remote-port=/dev/ttyACM*",
        "--pio-remote-port=/dev/ttyUSB0",
        "--pio-remote-count=3",
        f"--pio-remote-firmware={image}",
        "--pio-remote-lease-ttl=600",
        "--pio-remote-wait=45",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*WANTED Wanted(agents=['lab', 'bob/ci'], ports=['/dev/ttyACM*', '/dev/ttyUSB0'], "
            f"count=3, firmware={image!r}, lease_ttl=600.0, wait=45.0, baudrate=115200, "
            "raw=False)".replace("[", "[[]")
        ]
    )


@pytest.mark.parametrize(
    ("services", "expected"),
    [
        ("serial", "count=2, firmware=None, lease_ttl=1800.0, wait=0.0, baudrate=9600, raw=True)"),
        ("esp", "baudrate=9600, raw=False)"),
    ],
)
def test_pytest_embedded_options_count_and_choose_the_url(pytester, services, expected):
    """--count and --baud are pytest-embedded's; its serial service alone gets socket://."""
    pytest.importorskip("pytest_embedded")
    pytester.makeconftest(
        "from pio_remote.pytest_hil import plugin\n\n"
        "def pytest_sessionstart(session):\n"
        "    print('WANTED', plugin.wanted(session.config))\n"
    )
    args = ["-s", "-p", "no:cacheprovider", "--pio-remote-port=/dev/x", "--count=2"]
    result = pytester.runpytest(*args, "--baud=9600", f"--embedded-services={services}")
    assert expected in result.stdout.str()


def test_ini_keys_of_the_same_names(pytester, tmp_path):
    (pytester.path / "fw.elf").write_bytes(b"x")
    pytester.makeini(
        """
[pytest]
pio-remote-agent = lab
pio-remote-port = /dev/ttyACM0 /dev/ttyACM1
pio-remote-count = 2
pio-remote-firmware = fw.elf
pio-remote-lease-ttl = 120
pio-remote-wait = 5
"""
    )
    pytester.makepyfile(SHOW)
    result = pytester.runpytest("-s")
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "agents=['lab'], ports=['/dev/ttyACM0', '/dev/ttyACM1'], count=2" in out
    assert f"firmware=PosixPath('{pytester.path}/fw.elf'), lease_ttl=120.0, wait=5.0" in out
    # An option given on the command line wins over the ini key.
    result = pytester.runpytest("-s", "--pio-remote-agent=other")
    assert "agents=['other']" in result.stdout.str()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--pio-remote-port=/dev/x", "--pio-remote-firmware=nope.elf"],
            "ERROR: --pio-remote-firmware: */nope.elf does not exist: build it first, or fix*",
        ),
        (
            ["--pio-remote-port=/dev/x", "--pio-remote-wait=soon"],
            "ERROR: --pio-remote-wait: 'soon' is not a number of seconds",
        ),
    ],
)
def test_usage_errors_are_one_line_before_any_test(pytester, args, message):
    pytester.makepyfile(SHOW)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_a_board_fixture_without_configuration_says_what_to_give(pytester):
    pytester.makepyfile(
        """
def test_board(remote_board):
    pass
"""
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*pio-remote: no boards configured: give --pio-remote-port PORT*"])
    assert "Traceback" not in result.stdout.str()


def test_an_unreachable_relay_is_one_line_and_taken_once(pytester, monkeypatch, tmp_path):
    monkeypatch.setenv("PIO_REMOTE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIO_REMOTE_RELAY", "ws://127.0.0.1:1")
    monkeypatch.setenv("PIO_REMOTE_AUTH_TOKEN", "t" * 32)
    pytester.makepyfile(
        """
def test_one(remote_board):
    pass

def test_two(remote_board):
    pass
"""
    )
    result = pytester.runpytest("--pio-remote-port=/dev/x")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*pio-remote: *127.0.0.1:1*"])
    assert "Traceback" not in result.stdout.str()


def test_the_plugin_and_the_blocking_api_import_neither_click_nor_rich():
    import subprocess
    import sys

    code = (
        "import sys, pio_remote.pytest_hil.plugin, pio_remote.pytest_hil.farm, pio_remote.sync\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('click', 'rich')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
