"""Choosing the uploader, filling its template, and killing its process group."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio
from proctools import wait_gone_async

from pio_remote.agent.config import AgentConfig, Globs, UploaderConfig
from pio_remote.agent.jobs import uploader
from pio_remote.agent.jobs.uploader import Job, UploaderError, choose, render


def test_render_substitutes_inside_arguments_without_a_shell():
    argv = render(
        "esptool.py --port $UPLOAD_PORT -b ${UPLOAD_SPEED} write_flash 0x10000 $SOURCE "
        "$UPLOAD_FLAGS --keep $SOURCES $HOME",
        {"SOURCE": "/w/fw.bin", "UPLOAD_PORT": "/dev/x; rm -rf ~", "UPLOAD_SPEED": "921600"},
        ["--flash_mode", "dio"],
    )
    assert argv == [
        "esptool.py",
        "--port",
        "/dev/x; rm -rf ~",
        "-b",
        "921600",
        "write_flash",
        "0x10000",
        "/w/fw.bin",
        "--flash_mode",
        "dio",
        "--keep",
        "$SOURCES",
        "$HOME",
    ]


def test_render_rejects_unbalanced_quotes():
    with pytest.raises(UploaderError, match="cannot split"):
        render("flash 'oops", {})


def job(tmp_path: Path, **kw) -> Job:
    base = dict(
        agent_id="alice/lab",
        port="/dev/ttyUSB0",
        speed="",
        source=tmp_path / "fw.bin",
        project_dir=tmp_path,
        env="dev",
        targets=["upload"],
        client_command=None,
        upload_flags=[],
    )
    base.update(kw)
    return Job(**base)


@pytest.fixture
def no_pio(monkeypatch):
    monkeypatch.setattr(uploader, "find_platformio", lambda: None)


@pytest.fixture
def with_pio(monkeypatch):
    monkeypatch.setattr(uploader, "find_platformio", lambda: "/opt/pio")


def test_agent_toml_uploader_wins_over_everything(tmp_path, with_pio):
    config = AgentConfig(
        uploader=[
            UploaderConfig(Globs(["/dev/ttyACM*"]), "a $SOURCE"),
            UploaderConfig(Globs(["/dev/ttyUSB*"]), "b $UPLOAD_PORT"),
        ]
    )
    plan = choose(config, job(tmp_path, client_command="evil"))
    assert plan.argv == ["b", "/dev/ttyUSB0"]
    assert plan.origin.startswith("agent.toml [[uploader]] 2")


def test_platformio_on_the_agent_is_second(tmp_path, with_pio):
    plan = choose(AgentConfig(), job(tmp_path))
    assert plan.argv == [
        "/opt/pio",
        "run",
        "-d",
        str(tmp_path),
        "-e",
        "dev",
        "-t",
        "nobuild",
        "-t",
        "upload",
        "--upload-port",
        "/dev/ttyUSB0",
        "--disable-auto-clean",
    ]


def test_client_command_is_refused_unless_allowed(tmp_path, with_pio, monkeypatch):
    with pytest.raises(UploaderError, match="--allow-client-commands") as err:
        choose(AgentConfig(), job(tmp_path, client_command="touch /tmp/x"))
    assert err.value.code == "client_command_refused"
    # Allowed: PlatformIO runs the project's upload_command itself...
    plan = choose(AgentConfig(allow_client_commands=True), job(tmp_path, client_command="x"))
    assert plan.argv[0] == "/opt/pio"
    assert plan.client_code  # in the sandbox: the ini may carry the client's commands
    assert not choose(AgentConfig(), job(tmp_path)).client_code
    # ...and without PlatformIO we run it, templated the same way, in the sandbox.
    monkeypatch.setattr(uploader, "find_platformio", lambda: None)
    plan = choose(
        AgentConfig(allow_client_commands=True), job(tmp_path, client_command="flash $SOURCE")
    )
    assert plan.argv == ["flash", str(tmp_path / "fw.bin")]
    assert plan.client_code


def test_no_uploader_says_how_to_add_one(tmp_path, no_pio):
    with pytest.raises(UploaderError, match=r"entry.* and restart the agent"):
        choose(AgentConfig(), job(tmp_path, env=None))


def test_agent_toml_uploader_only_flashes(tmp_path, no_pio):
    config = AgentConfig(uploader=[UploaderConfig(Globs(["/dev/*"]), "x")])
    with pytest.raises(UploaderError, match="uploadfs need PlatformIO Core on the agent"):
        choose(config, job(tmp_path, targets=["upload", "uploadfs"]))


async def test_output_streams_and_exit_code_is_returned(tmp_path):
    out = bytearray()

    async def collect(data: bytes) -> None:
        out.extend(data)

    code = await uploader.run_streaming(
        ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 7"], tmp_path, collect
    )
    assert code == 7
    assert b"to-stdout" in out and b"to-stderr" in out


async def test_cancel_kills_the_whole_process_group(tmp_path):
    script = (
        "import subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(c.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    pids: list[int] = []
    got_child = trio.Event()

    async def collect(data: bytes) -> None:
        pids.append(int(data.split()[0]))
        got_child.set()

    with trio.move_on_after(10) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                uploader.run_streaming,
                [sys.executable, "-c", script],
                tmp_path,
                collect,
                pids.append,
            )
            await got_child.wait()
            nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught
    leader, child = pids
    with trio.fail_after(5):
        await wait_gone_async([leader, child])
    with pytest.raises(ChildProcessError):
        os.waitpid(leader, os.WNOHANG)  # reaped: no zombie left behind
