"""Choosing the agent and port, and reading monitor_* from platformio.ini."""

from __future__ import annotations

import pytest

from pio_remote.client.monitor.options import (
    ChoiceError,
    ProjectError,
    check_port,
    choose_agent,
    choose_port,
    read_project,
)

USB = {"port": "/dev/ttyACM0", "description": "Pico", "hwid": "USB VID:PID=2E8A:000A SER=E66"}
UART = {"port": "/dev/ttyS0", "description": "ttyS0", "hwid": "PNP0501"}
PTY = {"port": "/tmp/vb/board0", "description": "pseudo-terminal", "hwid": "n/a"}
PTY2 = {"port": "/tmp/vb/board1", "description": "pseudo-terminal", "hwid": "n/a"}


def test_the_only_usb_port_wins_over_others():
    assert choose_port([UART, USB, PTY], None, "lab") == "/dev/ttyACM0"


def test_the_only_port_is_chosen_without_usb():
    assert choose_port([PTY], None, "lab") == "/tmp/vb/board0"


def test_ambiguity_lists_the_candidates():
    with pytest.raises(ChoiceError, match=r"2 candidate ports: /tmp/vb/board0, /tmp/vb/board1"):
        choose_port([PTY, PTY2], None, "lab")
    usb2 = {**USB, "port": "/dev/ttyACM1"}
    with pytest.raises(ChoiceError, match="ttyACM0, /dev/ttyACM1; pick one with -p"):
        choose_port([USB, usb2, PTY], None, "lab")
    with pytest.raises(ChoiceError, match="offers no serial ports"):
        choose_port([], None, "lab")


def test_globs_must_match_exactly_one_port():
    assert choose_port([PTY, PTY2, USB], "/dev/ttyACM*", "lab") == "/dev/ttyACM0"
    with pytest.raises(ChoiceError, match="2 ports on agent 'lab' match"):
        choose_port([PTY, PTY2], "/tmp/vb/*", "lab")
    with pytest.raises(ChoiceError, match="no port on agent 'lab' matches '/dev/ttyUSB\\*'"):
        choose_port([PTY], "/dev/ttyUSB*", "lab")


def test_a_literal_name_is_passed_on_for_the_agent_to_check():
    assert choose_port([], "/dev/ttyUSB7", "lab") == "/dev/ttyUSB7"
    check_port([PTY], "/tmp/vb/board0", "lab")
    with pytest.raises(ChoiceError, match="offers no port '/dev/ttyUSB7'; its ports: /tmp/vb"):
        check_port([PTY], "/dev/ttyUSB7", "lab")


def test_exactly_one_agent():
    assert choose_agent(["lab-pi"], []) == "lab-pi"
    assert choose_agent([], ["lab-pi"]) == "lab-pi"
    with pytest.raises(ChoiceError, match="2 agents are online: a, b; pick one with -a"):
        choose_agent([], ["a", "b"])
    with pytest.raises(ChoiceError, match="no agents are online"):
        choose_agent([], [])
    with pytest.raises(ChoiceError, match="pass a single -a"):
        choose_agent(["a", "b"], ["a", "b"])


INI = """
[platformio]
default_envs = pico

[env]
monitor_speed = 115200
monitor_filters = time, colorize

[env:base]
monitor_dtr = 0

[env:uno]
monitor_port = /dev/ttyACM*
monitor_speed = 9600

[env:pico]
extends = env:base
monitor_rts = yes
monitor_eol = lf
monitor_filters =
    default
    send_on_enter
"""


def test_project_defaults_extends_and_default_envs(tmp_path):
    (tmp_path / "platformio.ini").write_text(INI)
    pico = read_project(tmp_path)
    assert pico is not None and pico.environment == "pico"
    assert pico.speed == 115200  # from [env]
    assert pico.dtr is False  # from extends = env:base
    assert pico.rts is True
    assert pico.eol == "LF"
    assert pico.filters == ["default", "send_on_enter"]
    uno = read_project(tmp_path, "uno")
    assert uno is not None
    assert (uno.port, uno.speed, uno.filters) == ("/dev/ttyACM*", 9600, ["time", "colorize"])
    assert uno.dtr is None and uno.rts is None


def test_first_env_without_default_envs(tmp_path):
    (tmp_path / "platformio.ini").write_text("[env:a]\nmonitor_speed = 74880\n[env:b]\n")
    project = read_project(tmp_path)
    assert project is not None and (project.environment, project.speed) == ("a", 74880)


def test_project_errors_say_what_to_fix(tmp_path):
    assert read_project(tmp_path) is None  # no platformio.ini: nothing to read
    with pytest.raises(ProjectError, match="-e uno given, but there is no"):
        read_project(tmp_path, "uno")
    (tmp_path / "platformio.ini").write_text("[env:a]\nmonitor_speed = fast\nmonitor_rts = 2\n")
    with pytest.raises(ProjectError, match="monitor_speed = 'fast' is not a number"):
        read_project(tmp_path)
    with pytest.raises(ProjectError, match="unknown environment 'zz'"):
        read_project(tmp_path, "zz")
