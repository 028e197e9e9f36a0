"""The sans-IO transfer rules: stream checks, names, size limits, hash indexes and deltas."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pio_remote.wire import transfer
from pio_remote.wire.transfer import FileEntry, Receiver, TransferError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_receiver_accepts_the_announced_bytes_in_any_chunking():
    data = bytes(range(256)) * 40
    r = Receiver("fw.bin", len(data), sha(data))
    for i in range(0, len(data), 777):
        r.feed(data[i : i + 777])
    r.finish()
    assert r.received == len(data)


@pytest.mark.parametrize(
    ("sent", "announced", "code", "message"),
    [
        (b"B" * 10, b"A" * 10, "sha256_mismatch", "not the announced"),
        (b"A" * 9, b"A" * 10, "size_mismatch", "after 9 of 10 bytes"),
        (b"A" * 11, b"A" * 10, "size_mismatch", "more than the announced 10 bytes"),
    ],
)
def test_receiver_rejects_wrong_content(sent, announced, code, message):
    r = Receiver("fw.bin", len(announced), sha(announced))
    with pytest.raises(TransferError, match=message) as err:
        r.feed(sent)
        r.finish()
    assert err.value.code == code


def test_size_limit_error_names_size_and_limit():
    with pytest.raises(
        TransferError,
        match=r"2097152 bytes \(2.0 MiB\), over the agent's limit "
        r"of 1048576 bytes \(1.0 MiB\): raise max_upload_bytes",
    ) as err:
        transfer.check_size(2 * 1024 * 1024, 1024 * 1024, "file fw.bin")
    assert err.value.code == "too_large"
    assert transfer.check_size(5, 5, "x") == 5
    with pytest.raises(TransferError):
        transfer.check_size(True, 5, "x")


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "src/../../x", "src//a", "./src/a", "src/a\\b", ".pio/build/x", "x"]
)
def test_relpaths_stay_inside_the_synced_roots(path):
    with pytest.raises(TransferError):
        transfer.check_relpath(path)


def test_relpath_accepts_project_files():
    assert transfer.check_relpath("lib/blinky/src/blinky.cpp") == "lib/blinky/src/blinky.cpp"
    assert transfer.check_relpath("platformio.ini") == "platformio.ini"


def test_index_covers_project_layout_and_skips_build_output(tmp_path: Path):
    (tmp_path / "platformio.ini").write_text("[env:x]\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.c").write_text("int main;")
    (tmp_path / "lib" / "a" / ".git").mkdir(parents=True)
    (tmp_path / "lib" / "a" / ".git" / "HEAD").write_text("ref")
    (tmp_path / "lib" / "a" / "a.c").write_text("a")
    (tmp_path / ".pio" / "build").mkdir(parents=True)
    (tmp_path / ".pio" / "build" / "firmware.bin").write_text("x")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "t.c").write_text("t")
    index = transfer.build_index(tmp_path)
    assert sorted(index) == ["lib/a/a.c", "platformio.ini", "src/main.c", "test/t.c"]
    assert index["src/main.c"] == FileEntry("src/main.c", 9, sha(b"int main;"))
    assert transfer.index_from_json(transfer.index_to_json(index)) == index


def test_index_from_peer_is_validated():
    good = "0" * 64
    for raw in [
        [],
        {"../x": [1, good]},
        {"src/a": [1, "zz"]},
        {"src/a": [-1, good]},
        {"src/a": [1]},
    ]:
        with pytest.raises(TransferError):
            transfer.index_from_json(raw)


entries = st.dictionaries(
    st.sampled_from([f"src/f{i}.c" for i in range(12)]),
    st.tuples(st.integers(0, 3), st.sampled_from(["a" * 64, "b" * 64, "c" * 64])),
)


@given(entries, entries)
def test_applying_a_delta_turns_remote_into_local(local_raw, remote_raw):
    local = {p: FileEntry(p, s, h) for p, (s, h) in local_raw.items()}
    remote = {p: FileEntry(p, s, h) for p, (s, h) in remote_raw.items()}
    delta = transfer.diff(local, remote)
    result = dict(remote)
    for path in delta.removed:
        del result[path]
    for e in delta.changed:
        result[e.name] = e
    assert result == local
    # Only what differs travels.
    assert all(remote.get(e.name) != e for e in delta.changed)
    assert delta.bytes_changed == sum(e.size for e in delta.changed)


def test_identical_content_travels_once():
    a, b = FileEntry("src/a.c", 1, "a" * 64), FileEntry("src/b.c", 1, "a" * 64)
    assert transfer.unique_blobs([a, b]) == [a]


def test_hash_file_matches_hashlib_for_empty_small_and_large_files(tmp_path):
    import hashlib
    import os

    from pio_remote.wire.transfer import hash_file

    for size in (0, 1, 4096, 3 * 1024 * 1024 + 7):
        path = tmp_path / f"fw-{size}.bin"
        data = os.urandom(size)
        path.write_bytes(data)
        entry = hash_file(path)
        assert (entry.name, entry.size, entry.sha256) == (
            path.name,
            size,
            hashlib.sha256(data).hexdigest(),
        )
