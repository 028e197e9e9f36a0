"""Reading platformio.ini as the client does, and finding build artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest

from pio_remote.project import (
    ProjectConfig,
    ProjectError,
    find_artifacts,
    resolve_sysenv,
)

INI = """\
; a comment
[platformio]
default_envs = uno, esp
build_dir = /etc/evil
extra_configs = /etc/other.ini

[common]
speed = 921600

[env]
framework = arduino
upload_speed = 115200

[env:uno]
platform = atmelavr
board = uno
upload_port = /dev/ttyACM0 ; inline comment

[env:esp]
platform = espressif32
extends = common
upload_speed = ${common.speed}
upload_flags =
    --before=default_reset
    --after=hard_reset
extra_scripts = pre:steal.py
build_flags =
    -DFOO=1
    !cat /etc/shadow

[env:custom]
platform = ststm32
upload_protocol = custom
upload_command = openocd -f $PROJECT_DIR/ocd.cfg -c "program $SOURCE"
"""


def load(tmp_path: Path, text: str = INI) -> ProjectConfig:
    (tmp_path / "platformio.ini").write_text(text)
    return ProjectConfig.load(tmp_path)


def test_environments_defaults_and_inheritance(tmp_path):
    config = load(tmp_path)
    assert config.envs() == ["uno", "esp", "custom"]
    assert config.select_envs([]) == ["uno", "esp"]
    assert config.select_envs(["custom"]) == ["custom"]
    assert config.get("uno", "upload_port") == "/dev/ttyACM0"
    assert config.get("uno", "upload_speed") == "115200"  # from [env]
    assert config.get("esp", "upload_speed") == "921600"  # ${common.speed}
    assert config.get("esp", "speed") == "921600"  # extends = common
    assert config.get("uno", "framework") == "arduino"
    with pytest.raises(ProjectError, match="unknown environment 'nope'.*uno, esp, custom"):
        config.select_envs(["nope"])


def test_sysenv_interpolation(tmp_path, monkeypatch):
    monkeypatch.setenv("BOARD_PORT", "/dev/ttyUSB7")
    config = load(tmp_path, "[env:a]\nupload_port = ${sysenv.BOARD_PORT}\n")
    assert config.get("a", "upload_port") == "/dev/ttyUSB7"


def test_missing_ini_says_what_to_do(tmp_path):
    with pytest.raises(ProjectError, match="no platformio.ini in .*--firmware FILE"):
        ProjectConfig.load(tmp_path)


def test_client_command_only_with_custom_protocol(tmp_path):
    config = load(tmp_path)
    assert config.client_command("custom") == 'openocd -f $PROJECT_DIR/ocd.cfg -c "program $SOURCE"'
    assert config.client_command("uno") is None


def test_missing_firmware_names_file_and_build_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load(tmp_path, "[env:uno]\nplatform = atmelavr\n")
    with pytest.raises(ProjectError) as err:
        find_artifacts(config, "uno")
    assert str(err.value) == (
        "firmware .pio/build/uno/firmware.hex is missing: build it with 'pio run -e uno'"
    )


def test_artifacts_firmware_first_then_extra_images(tmp_path):
    config = load(tmp_path, "[env:esp]\nplatform = espressif32\n")
    build = tmp_path / ".pio" / "build" / "esp"
    build.mkdir(parents=True)
    for name in ["firmware.elf", "firmware.bin", "bootloader.bin", "partitions.bin", "x.o"]:
        (build / name).write_bytes(b"x")
    art = find_artifacts(config, "esp")
    assert art.source == build / "firmware.bin"
    assert [p.name for p in art.files] == [
        "firmware.bin",
        "firmware.elf",
        "bootloader.bin",
        "partitions.bin",
    ]


def test_build_dir_option_is_honoured_locally(tmp_path):
    config = load(tmp_path, "[platformio]\nbuild_dir = out\n[env:a]\n")
    assert config.build_dir("a") == tmp_path / "out" / "a"


def test_client_resolves_sysenv_from_its_own_environment():
    text = "[env:a]\nupload_speed = ${sysenv.SPEED}\nupload_flags = -P${sysenv.NONE}x\n"
    resolved = resolve_sysenv(text, {"SPEED": "921600"})
    assert resolved == "[env:a]\nupload_speed = 921600\nupload_flags = -Px\n"
    with pytest.raises(ProjectError, match="holds a line break"):
        resolve_sysenv(text, {"SPEED": "1\n[env:evil]"})


def test_agent_reads_no_environment_for_a_clients_file(monkeypatch):
    monkeypatch.setenv("AGENT_SECRET", "s3cret")
    config = ProjectConfig.parse("[env:a]\nupload_speed = ${sysenv.AGENT_SECRET}\n")
    with pytest.raises(ProjectError, match="cannot be resolved here"):
        config.get("a", "upload_speed")
