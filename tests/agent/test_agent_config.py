"""agent.toml is checked against its schema when the agent starts (issue 8 item 14)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Env

from pio_remote.agent import config
from pio_remote.home import ConfigError


def load(tmp_path: Path, text: str) -> config.AgentConfig:
    (tmp_path / "agent.toml").write_text(text)
    return config.load(tmp_path)


def test_a_list_or_a_string_of_globs_both_work(tmp_path):
    cfg = load(
        tmp_path,
        'port_glob = "/tmp/vb/*"\n'
        '[[uploader]]\nports = ["/dev/ttyUSB*", "/dev/ttyACM*"]\ncommand = "x $SOURCE"\n'
        '[[uploader]]\nports = "*.local"\ncommand = "y"\ntest_port = "/dev/ttyACM1"\n'
        "test_speed = 9600\n"
        '[[forward]]\nallow = ["127.0.0.1:3333"]\nport = "/dev/ttyACM0"\n',
    )
    assert cfg.port_globs == ["/tmp/vb/*"]
    assert cfg.uploaders[0].ports == ["/dev/ttyUSB*", "/dev/ttyACM*"]
    assert cfg.uploaders[1].ports == ["*.local"]
    assert (cfg.uploaders[1].test_port, cfg.uploaders[1].test_speed) == ("/dev/ttyACM1", 9600)
    assert cfg.forward[0].allow == ["127.0.0.1:3333"] and cfg.forward[0].port == "/dev/ttyACM0"
    assert load(tmp_path, 'port_globs = ["/a/*"]\n').port_globs == ["/a/*"]  # older spelling


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('prot_glob = "/dev/x"\n', r"unknown key 'prot_glob' \(did you mean 'port_glob'\?\)"),
        ('max_upload_bytes = "lots"\n', r"max_upload_bytes must be an integer, not a string"),
        ("max_upload_bytes = 0\n", "max_upload_bytes must be a positive number"),
        ('[[uploader]]\ncommand = "x"\n', r"uploader\[1\] needs 'ports'"),
        ('[[uploader]]\nports = "*"\n', r"uploader\[1\] needs 'command'"),
        ('[[uploader]]\nports = [1]\ncommand = "x"\n', r"uploader\[1\]\.ports\[1\] must be a "),
        ('[[uploader]]\nports = "*"\ncommand = "x"\nprots = 1\n', r"unknown key 'uploader\[1\]"),
        ('[[uploader]]\nports = "*"\ncommand = "x"\ntest_speed = "fast"\n', "must be an integer"),
        ("allow_client_commands = 1\n", "allow_client_commands must be true or false"),
        ('shares = "bob"\n', "shares must be a list of strings"),
        ('uploader = "x"\n', r"uploader must be a list of tables"),
        ("[[forward]]\nport = '/dev/x'\n", r"forward\[1\] needs 'allow'"),
        ("[[forward]]\nallow = ['nohost']\n", "'nohost' is not 'host:port'"),
        ("name = \n", "not valid TOML"),
        ('port_glob = "a"\nport_globs = "b"\n', "give 'port_glob' once"),
        ("handshake_timeout = 0\n", "handshake_timeout must be at least 1"),
        ("handshake_timeout = 2.5\n", "handshake_timeout must be an integer"),
        ("max_pending_handshakes = 0\n", "max_pending_handshakes must be at least 1"),
        ("max_pending_handshakes_per_account = -1\n", "_per_account must be at least 1"),
        (
            'remote_build_sandbox = "docker"\n',
            "remote_build_sandbox must be one of 'bwrap', 'none'",
        ),
        ("remote_build_timeout = 0\n", "remote_build_timeout must be a positive number of seconds"),
        ("remote_build_cpu_seconds = -1\n", "remote_build_cpu_seconds must be a positive"),
        ("allow_remote_build = 'yes'\n", "allow_remote_build must be true or false"),
        ("client_disk_quota_bytes = 0\n", "client_disk_quota_bytes must be a positive"),
        (
            "client_disk_quota_bytes = 20\nagent_disk_cap_bytes = 10\n",
            r"agent_disk_cap_bytes \(10\) must be at least client_disk_quota_bytes \(20\)",
        ),
        ("session_memory_bytes = 65536\n", "session_memory_bytes must be at least 2097152"),
        (
            "session_memory_bytes = 4194304\nagent_memory_bytes = 2097152\n",
            r"agent_memory_bytes \(2097152\) must be at least session_memory_bytes",
        ),
    ],
)
def test_broken_files_name_the_file_the_key_and_what_is_expected(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as err:
        load(tmp_path, text)
    assert str(err.value).startswith(f"{tmp_path / 'agent.toml'}: ")


def test_agent_start_refuses_a_broken_file_with_one_line_and_exit_2(tmp_path):
    machine = Env(tmp_path, {"PIO_REMOTE_RELAY": "ws://127.0.0.1:9", "PIO_REMOTE_AUTH_TOKEN": "x"})
    (tmp_path / "agent.toml").write_text('[[uploader]]\nports = "*"\ncommand = "x"\nprot = 1\n')
    result = machine.cli("agent", "start", "-n", "lab", check=False, timeout=30)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{tmp_path / 'agent.toml'}: unknown key 'uploader[1].prot'" in result.stderr


def test_pre_handshake_limits_have_pi_sized_defaults_and_can_be_set(tmp_path):
    cfg = load(tmp_path, "")
    assert (cfg.handshake_timeout, cfg.max_pending_handshakes) == (5, 64)
    assert cfg.max_pending_handshakes_per_account == 16
    cfg = load(tmp_path, "handshake_timeout = 2\nmax_pending_handshakes_per_account = 4\n")
    assert cfg.handshake_timeout == 2 and cfg.max_pending_handshakes_per_account == 4


def test_every_key_is_in_docs_agent_config_md():
    import dataclasses

    doc = (Path(__file__).resolve().parents[2] / "docs" / "agent-config.md").read_text()
    for cls in (
        config.AgentConfig,
        config.UploaderConfig,
        config.ForwardConfig,
        config.PowerConfig,
        config.ResetConfig,
    ):
        for f in dataclasses.fields(cls):
            assert f"`{f.name}`" in doc or f"`[[{f.name}]]`" in doc, f.name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'command = "flash $UPLOAD_PRT $SOURCE"\n',
            r"'\$UPLOAD_PRT' \(did you mean '\$UPLOAD_PORT'",
        ),
        ('command = "flash ${SORCE}"\n', r"'\$\{SORCE\}' \(did you mean '\$SOURCE'"),
        ('command = "flash $source"\n', r"'\$source' \(did you mean '\$SOURCE'"),
        ('command = "x"\ntest_port = "$UPLOAD_PORTS"\n', r"1 test_port: unknown placeholder"),
    ],
)
def test_a_misspelt_placeholder_is_refused_when_the_file_is_read(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as err:
        load(tmp_path, '[[uploader]]\nports = "*"\n' + text)
    assert "\n" not in str(err.value)


def test_placeholders_and_a_shells_own_variables_are_accepted(tmp_path):
    cfg = load(
        tmp_path,
        '[[uploader]]\nports = "*"\n'
        "command = \"sh -c 'flash --port $1 $HOME/f' _ ${UPLOAD_PORT} $UPLOAD_FLAGS $BUILD_DIR\"\n",
    )
    assert "$HOME" in cfg.uploaders[0].command


def test_agent_start_refuses_a_misspelt_placeholder_with_one_line_and_exit_2(tmp_path):
    machine = Env(tmp_path, {"PIO_REMOTE_RELAY": "ws://127.0.0.1:9", "PIO_REMOTE_AUTH_TOKEN": "x"})
    (tmp_path / "agent.toml").write_text(
        '[[uploader]]\nports = "*"\ncommand = "flash $UPLOAD_PRT $SOURCE"\n'
    )
    result = machine.cli("agent", "start", "-n", "lab", check=False, timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "unknown placeholder '$UPLOAD_PRT' (did you mean '$UPLOAD_PORT'?)" in result.stderr


def test_remote_builds_are_off_and_sandboxed_by_default(tmp_path):
    cfg = load(tmp_path, "")
    assert cfg.allow_remote_build is False
    assert cfg.remote_build_sandbox == "bwrap"
    assert (cfg.remote_build_cpu_seconds, cfg.remote_build_timeout) == (900, 1800)


def test_budgets_default_to_what_fits_a_raspberry_pi(tmp_path):
    cfg = load(tmp_path, "")
    mib = 1024 * 1024
    assert (cfg.client_disk_quota_bytes, cfg.agent_disk_cap_bytes) == (512 * mib, 2048 * mib)
    assert (cfg.session_memory_bytes, cfg.agent_memory_bytes) == (16 * mib, 64 * mib)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[power]]\nports = "/x/*"\non = "p on $PRT"\noff = "p off"\n', r"did you mean '\$PORT'"),
        ('[[power]]\nports = "/x/*"\non = " "\noff = "p off"\n', r"on: the command is empty"),
        ('[[power]]\nports = "/x/*"\non = "a"\noff = "b"\ntimeout = 0\n', r"timeout 1\.\.3600"),
        ('[[reset]]\nports = "/x/*"\nstyle = "jtag"\n', r"style must be one of 'pio'"),
        ('[[reset]]\nports = "/x/*"\npulse_ms = 0\n', r"pulse_ms must be between"),
    ],
)
def test_power_and_reset_entries_are_checked_when_the_file_is_read(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as err:
        load(tmp_path, text)
    assert "\n" not in str(err.value)


def test_power_and_reset_entries_are_read(tmp_path):
    cfg = load(
        tmp_path,
        '[[power]]\nports = ["/x/*"]\non = "sw on $PORT"\noff = "sw off ${PORT}"\n'
        '[[reset]]\nports = "/x/*"\nstyle = "open"\n',
    )
    assert cfg.power[0].on == "sw on $PORT" and cfg.power[0].cycle_delay_ms == 1000
    assert cfg.reset[0].style == "open" and cfg.reset[0].pulse_ms == 100
