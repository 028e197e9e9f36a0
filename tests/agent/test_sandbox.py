"""The bwrap command line for the client's code, and the job's CPU time (pure parts)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pio_remote.agent.config import AgentConfig
from pio_remote.agent.jobs import sandbox

JOB = Path("/srv/work/projects/abc/0123")
CORE = Path("/home/pi/.platformio")


def spec(**kw: object) -> sandbox.Spec:
    base: dict[str, object] = dict(
        job_dir=JOB,
        core_dir=CORE,
        hidden=[Path("/home"), Path("/tmp"), Path("/home/pi"), Path("/srv/work")],
        readonly=[Path("/home/pi/.local")],
        locks=[CORE / "platforms.lock"],
        env={"PATH": "/usr/bin", "PLATFORMIO_CORE_DIR": str(CORE)},
    )
    base.update(kw)
    return sandbox.Spec(**base)  # type: ignore[arg-type]


def pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_the_system_is_read_only_and_only_the_job_is_writable():
    argv = sandbox.bwrap_argv("bwrap", spec(), ["pio", "run"])
    assert argv[:1] == ["bwrap"] and argv[-3:] == ["--", "pio", "run"]
    assert pairs(argv, "--ro-bind")[:1] == ["/"]
    assert pairs(argv, "--bind") == [str(JOB)]  # nothing from a job dir is a mount source
    i = argv.index("--dev-bind")
    assert argv[i : i + 3] == ["--dev-bind", "/dev/null", str(CORE / "platforms.lock")]
    assert str(CORE) in pairs(argv, "--ro-bind")
    for flag in ("--unshare-pid", "--unshare-net", "--die-with-parent", "--new-session"):
        assert flag in argv
    assert "--clearenv" in argv and pairs(argv, "--chdir") == [str(JOB)]


def test_homes_and_state_are_hidden_before_anything_is_re_exposed():
    argv = sandbox.bwrap_argv("bwrap", spec(), ["pio"])
    hidden = pairs(argv, "--tmpfs")
    assert hidden == ["/home", "/tmp", "/srv/work"]  # /home/pi is under /home: one tmpfs
    last_tmpfs = max(i for i, a in enumerate(argv) if a == "--tmpfs")
    root = argv.index("--ro-bind")
    assert argv[root : root + 3] == ["--ro-bind", "/", "/"] and root < last_tmpfs
    mounts = ("--bind", "--ro-bind", "--dev-bind")
    exposed = [i for i, a in enumerate(argv) if a in mounts and i != root]
    assert min(exposed) > last_tmpfs
    assert argv.index(str(JOB)) > last_tmpfs


def test_network_only_for_ota_and_a_device_only_when_given():
    argv = sandbox.bwrap_argv("bwrap", spec(network=True, locks=[]), ["x"])
    assert "--unshare-net" not in argv and "--dev-bind" not in argv
    argv = sandbox.bwrap_argv("bwrap", spec(device=("/dev/ttyUSB0", "/dev/ttyUSB0")), ["x"])
    assert "--unshare-net" in argv
    assert argv.count("--dev-bind") == 2  # the lock, the port
    i = argv.index("/dev/ttyUSB0") - 1
    assert argv[i : i + 3] == ["--dev-bind", "/dev/ttyUSB0", "/dev/ttyUSB0"]
    link = sandbox.bwrap_argv("bwrap", spec(device=("/dev/pts/3", "/tmp/vb/b0")), ["x"])
    i = link.index("/dev/pts/3") - 1
    assert link[i : i + 3] == ["--dev-bind", "/dev/pts/3", "/tmp/vb/b0"]  # the name it uses
    assert link.index("/tmp/vb/b0") > max(j for j, a in enumerate(link) if a == "--tmpfs")


def test_no_core_directory_means_no_core_mount():
    argv = sandbox.bwrap_argv("bwrap", spec(core_dir=None, locks=[]), ["x"])
    assert str(CORE) not in pairs(argv, "--ro-bind") + pairs(argv, "--bind")
    assert str(CORE) in pairs(sandbox.bwrap_argv("bwrap", spec(), ["x"]), "--ro-bind")


def test_nothing_holding_the_agents_state_or_a_home_is_re_exposed():
    home = Path("/home/pi")
    state = [home / ".pio-remote", Path("/srv/work")]
    got = sandbox.safe_readonly(
        [home, home / ".local", Path("/"), Path("/srv"), Path("/opt/pio"), Path("/opt/pio")],
        state,
        [home],
    )
    assert got == [home / ".local", Path("/opt/pio")]


def test_the_environment_keeps_no_secret():
    environ = {
        "PATH": "/usr/bin",
        "PIO_REMOTE_AUTH_TOKEN": "relay-secret",
        "PIO_REMOTE_HOME": "/home/pi/.pio-remote",
        "PLATFORMIO_AUTH_TOKEN": "pio-secret",
        "PLATFORMIO_SETTING_ENABLE_TELEMETRY": "yes",
        "AWS_SECRET_ACCESS_KEY": "x",
        "LANG": "C.UTF-8",
    }
    env = sandbox.sandbox_env(environ, CORE)
    assert "relay-secret" not in env.values() and "pio-secret" not in env.values()
    assert env["PATH"] == "/usr/bin" and env["LANG"] == "C.UTF-8"
    assert env["PLATFORMIO_CORE_DIR"] == str(CORE)
    assert env["PLATFORMIO_SETTING_ENABLE_TELEMETRY"] == "no"
    assert env["HOME"] == "/tmp" and set(env) >= {"PLATFORMIO_CACHE_DIR"}
    assert not any(k.startswith("PIO_REMOTE_") or k.startswith("AWS") for k in env)


@given(st.lists(st.sampled_from(["/a", "/a/b", "/a/b/c", "/b", "/ab", "/b/a"]), min_size=1))
def test_every_hidden_path_is_under_exactly_one_tmpfs(paths):
    argv = sandbox.bwrap_argv("bwrap", spec(hidden=[Path(p) for p in paths]), ["x"])
    mounts = [Path(p) for p in pairs(argv, "--tmpfs")]
    for p in map(Path, paths):
        assert sum(1 for m in mounts if m == p or m in p.parents) == 1


def test_refusals_name_the_key_and_the_fix(monkeypatch):
    with pytest.raises(sandbox.SandboxRefused, match="allow_remote_build = true") as err:
        sandbox.check_remote_build(AgentConfig(), "pi")
    assert err.value.code == "remote_build_refused"
    monkeypatch.setattr(sandbox, "find_bwrap", lambda: None)
    allowed = AgentConfig(allow_remote_build=True)
    with pytest.raises(sandbox.SandboxRefused, match="apt install bubblewrap") as err:
        sandbox.check_remote_build(allowed, "pi")
    assert 'remote_build_sandbox = "none"' in str(err.value)
    allowed.remote_build_sandbox = "none"
    sandbox.check_remote_build(allowed, "pi")
    assert sandbox.wrap(allowed, "pi", [], Path("/x"), ["pio"]) == ["pio"]


def test_tree_cpu_seconds_counts_children_and_what_they_reaped():
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys, time\n"
            f"subprocess.run([sys.executable, '-c', {busy!r}])\n"
            "print('child done', flush=True)\ntime.sleep(30)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "child done\n"
        assert sandbox.tree_cpu_seconds(parent.pid) >= 0.55  # the reaped child's CPU counts
        assert sandbox.tree_cpu_seconds(os.getpid()) >= sandbox.tree_cpu_seconds(parent.pid)
    finally:
        parent.kill()
        parent.wait()


def test_a_package_platformio_starts_to_install_is_named():
    out = b"Processing dev\r\nLibrary Manager: Installing bblanchon/ArduinoJson\r\nHTTP"
    assert sandbox.missing_package(out) == "bblanchon/ArduinoJson"
    assert sandbox.missing_package(b"Platform Manager: Installing ststm32\n") == "ststm32"
    assert sandbox.missing_package(b"Tool Manager: Installing tool-") is None  # not whole yet
    assert sandbox.missing_package(b"Compiling .pio/build/dev/src/main.o\n") is None
