"""The gate every client-sent name, path and port goes through (issue 15 items 1 and 3)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pio_remote.agent import gate
from pio_remote.agent.handlers import CallFailed
from pio_remote.agent.jobs import projects
from pio_remote.agent.jobs.workspace import client_config

BAD_NAMES = ["", ".", "..", "a/b", "/etc", "..\\x", "a\0b", "x" * 256, 3, None]
# Characters that matter to paths and globs, plus a few ordinary ones.
PATHY = st.text(alphabet="/.a\\\0*-_", max_size=12)


@pytest.mark.parametrize("value", BAD_NAMES)
def test_names_are_one_plain_component(value):
    with pytest.raises(CallFailed) as err:
        gate.name(value)
    assert err.value.code == "bad_params"


@given(PATHY)
def test_a_name_that_passes_is_one_component_inside_its_directory(value):
    try:
        got = gate.name(value)
    except CallFailed:
        return
    assert got not in ("", ".", "..") and not {"/", "\\", "\0"} & set(got)
    assert os.path.dirname(os.path.normpath(os.path.join("/job", got))) == "/job"


@given(PATHY)
def test_a_relpath_that_passes_never_leaves_its_root(value):
    try:
        parts = gate.relpath(value)
    except CallFailed:
        return
    joined = os.path.normpath(os.path.join("/job", *parts))
    assert joined.startswith("/job/") and len(parts) == value.count("/") + 1


@pytest.mark.parametrize("value", ["..", ".", "-e", "a/b", "/x", "a b", "a\0", ""])
def test_environment_names(value):
    with pytest.raises(CallFailed):
        gate.env(value)


def test_environment_names_that_platformio_uses_pass():
    assert gate.env("nucleo_f401re-debug.2") == "nucleo_f401re-debug.2"


@pytest.mark.parametrize("value", ["../x", "a/../b", "/abs", "-f", "a//b", "a/./b", "a b", "x/"])
def test_suites_are_paths_under_test_and_never_options(value):
    with pytest.raises(CallFailed):
        gate.suite(value)


def test_suites_pass():
    assert gate.suite("embedded/test_blink") == "embedded/test_blink"


@pytest.mark.parametrize("value", ["../" * 8, "0" * 15, "G" * 16, "0" * 65, 7])
def test_project_ids(value):
    with pytest.raises(CallFailed):
        gate.project_id(value)


def test_inside_refuses_paths_out_of_the_root_or_with_dotdot(tmp_path):
    job = tmp_path / "job"
    assert gate.inside(job, job / ".pio" / "build" / "dev", "b") == (".pio", "build", "dev")
    for path in (tmp_path / "other", job / "..", job / "x" / ".." / ".." / "y", Path("/etc")):
        with pytest.raises(CallFailed, match="outside the project"):
            gate.inside(job, path, "the build directory")


def test_place_links_a_new_file_and_never_overwrites(tmp_path):
    src = tmp_path / "blob"
    src.write_bytes(b"firmware")
    job = tmp_path / "job"
    job.mkdir()
    gate.place(src, job, (".pio", "build", "dev", "fw.bin"))
    placed = job / ".pio" / "build" / "dev" / "fw.bin"
    assert placed.read_bytes() == b"firmware" and placed.stat().st_ino == src.stat().st_ino
    other = tmp_path / "other"
    other.write_bytes(b"theirs")
    with pytest.raises(CallFailed, match="never overwrites"):
        gate.place(other, job, (".pio", "build", "dev", "fw.bin"))
    assert placed.read_bytes() == b"firmware"


def test_place_never_writes_through_a_symlink(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "authorized_keys").write_text("owner's key\n")
    src = tmp_path / "blob"
    src.write_text("attacker's key\n")
    job = tmp_path / "job"
    job.mkdir()
    (job / "link").symlink_to(outside)  # a directory on the way
    with pytest.raises(CallFailed, match="symlink"):
        gate.place(src, job, ("link", "authorized_keys"))
    (job / "authorized_keys").symlink_to(outside / "authorized_keys")  # the file itself
    with pytest.raises(CallFailed, match="never overwrites"):
        gate.place(src, job, ("authorized_keys",))
    assert (outside / "authorized_keys").read_text() == "owner's key\n"
    assert sorted(p.name for p in outside.iterdir()) == ["authorized_keys"]


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs a second file system")
def test_place_copies_across_file_systems_still_as_a_new_file(tmp_path):
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        job = Path(shm)
        if os.stat(job).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the same file system here")
        src = tmp_path / "blob"
        src.write_bytes(b"image")
        gate.place(src, job, ("fw.bin",))
        assert (job / "fw.bin").read_bytes() == b"image"
        src.write_bytes(b"other")
        with pytest.raises(CallFailed, match="never overwrites"):
            gate.place(src, job, ("fw.bin",))
        assert (job / "fw.bin").read_bytes() == b"image"


def test_replace_swaps_the_entry_and_leaves_a_symlinks_target_alone(tmp_path):
    target = tmp_path / "bashrc"
    target.write_text("owner\n")
    tree = tmp_path / "tree"
    (tree / "src").mkdir(parents=True)
    (tree / "src" / "main.c").symlink_to(target)
    gate.replace(b"int main;\n", tree, ("src", "main.c"))
    assert (tree / "src" / "main.c").read_text() == "int main;\n"
    assert not (tree / "src" / "main.c").is_symlink()
    assert target.read_text() == "owner\n"
    assert sorted(p.name for p in (tree / "src").iterdir()) == ["main.c"]  # no temp left


def test_remove_and_regular_file_never_follow_a_symlinked_directory(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.c").write_text("keep\n")
    tree = tmp_path / "tree"
    (tree / "src").mkdir(parents=True)
    (tree / "src" / "evil").symlink_to(outside)
    assert not gate.regular_file(tree, ("src", "evil", "x.c"))
    gate.remove(tree, ("src", "evil", "x.c"))
    assert (outside / "x.c").read_text() == "keep\n"
    (tree / "src" / "a.c").write_text("a\n")
    assert gate.regular_file(tree, ("src", "a.c"))
    gate.remove(tree, ("src", "a.c"))
    assert not (tree / "src" / "a.c").exists()


# ---- ports --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "pattern", "matches"),
    [
        ("/dev/vb/board0", "/dev/vb/*", True),
        ("/dev/vb/./board0", "/dev/vb/*", False),
        ("/dev/vb/../../../etc/shadow", "/dev/vb/*", False),
        ("/dev/vb/x/board0", "/dev/vb/*", False),
        ("/dev/vb//board0", "/dev/vb/*", False),
        ("/dev/vb/..", "/dev/vb/*", False),
        ("/dev/ttyUSB0", "*", False),
        ("esp.lab.local", "*.local", True),
        ("/dev/serial/by-id/usb-st-if00", "/dev/serial/by-id/*-if00", True),
    ],
)
def test_globs_match_one_component_at_a_time(value, pattern, matches):
    assert gate.glob_match(value, pattern) is matches


@given(PATHY, PATHY)
def test_a_glob_never_matches_across_a_slash_nor_a_dot_component(value, pattern):
    if gate.glob_match(value, pattern):
        assert value.count("/") == pattern.count("/")
        assert not {".", ".."} & set(value.split("/"))


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ("192.168.1.20", "192.168.1.20"),
        ("FE80::0:1%eth0", "fe80::1%eth0"),
        ("ESP32-Lab.local", "esp32-lab.local"),
        ("bench-port", "bench-port"),
        ("/dev/ttyUSB0", None),
        ("..", None),
        (".", None),
        ("esp.local.", None),
        ("10.1", None),
        ("COM3", None),
        ("a;b", None),
        ("-x.local", None),
        ("", None),
    ],
)
def test_network_names(value, canonical):
    assert gate.network_name(value) == canonical


def test_a_port_is_exactly_a_listed_device_or_a_network_name(tmp_path):
    master, slave = os.openpty()
    try:
        pty = os.ttyname(slave)
        (tmp_path / "board0").symlink_to(pty)
        (tmp_path / "stable").symlink_to(pty)
        listed = [str(tmp_path / "board0"), str(tmp_path / "stable")]
        one = gate.port(str(tmp_path / "board0"), listed)
        two = gate.port(str(tmp_path / "stable"), listed)
        assert one is not None and two is not None
        assert one.key == two.key == str(tmp_path / "board0")  # one board, one lease
        assert two.name == str(tmp_path / "stable")  # what the uploader is given
        for alias in (
            f"{tmp_path}/./board0",
            f"{tmp_path}/../{tmp_path.name}/board0",
            f"{tmp_path}//board0",
            pty,
            "/etc/shadow",
            f"{tmp_path}/board0\0",
        ):
            assert gate.port(alias, listed) is None, alias
        assert gate.port("ESP.local", listed) == gate.Port("ESP.local", "esp.local", False)
        assert gate.port("esp.local", listed, network=False) is None
    finally:
        os.close(master)
        os.close(slave)


def test_read_text_never_reads_through_a_symlink(tmp_path):
    key = tmp_path / "identity.key"
    key.write_text("secret\n")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "platformio.ini").symlink_to(key)  # what a build could leave behind
    with pytest.raises(CallFailed, match="symlink"):
        gate.read_text(tree, ("platformio.ini",))
    (tree / "platformio.ini").unlink()
    (tree / "platformio.ini").write_text("[env:x]\n")
    assert gate.read_text(tree, ("platformio.ini",)) == "[env:x]\n"
    with pytest.raises(FileNotFoundError):
        gate.read_text(tree, ("missing.ini",))


def test_build_outputs_must_be_regular_files_inside_the_project(tmp_path):
    """What run -r / test -r hand to an uploader or the cache after the client's build."""
    secret = tmp_path / "identity.key"
    secret.write_bytes(b"private key")
    project = tmp_path / "project"
    build = project / ".pio" / "build" / "dev"
    build.mkdir(parents=True)

    def values(text: str):
        return client_config(text, project / "platformio.ini")

    (build / "firmware.bin").write_bytes(b"image")
    art = projects.checked_artifacts(project, values("[env:dev]\n"), "dev")
    assert art.source == build / "firmware.bin"

    (build / "firmware.bin").unlink()
    (build / "firmware.bin").symlink_to(secret)  # a build that links the key as its image
    with pytest.raises(CallFailed, match="not a regular file"):
        projects.checked_artifacts(project, values("[env:dev]\n"), "dev")

    (tmp_path / "elsewhere" / "dev").mkdir(parents=True)
    (tmp_path / "elsewhere" / "dev" / "firmware.bin").write_bytes(b"image")
    outside = f"[DEFAULT]\nbuild_dir = {tmp_path / 'elsewhere'}\n[platformio]\n[env:dev]\n"
    with pytest.raises(CallFailed, match="outside the project"):
        projects.checked_artifacts(project, values(outside), "dev")
