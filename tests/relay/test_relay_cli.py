"""``python -m pio_remote.relay user/token/serve``: output, errors, and what lands on disk."""

from __future__ import annotations

import dataclasses
import re
import stat
from pathlib import Path

from relay_testkit import relay_cli

from pio_remote.relay.accounts import DB_NAME, hash_token
from pio_remote.relay.limits import Limits

TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}\n")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_user_lifecycle_and_token_storage(tmp_path: Path) -> None:
    data = tmp_path / "relay-data"
    added = relay_cli("user", "add", "alice", data_dir=data)
    assert added.returncode == 0, added.stderr
    assert TOKEN_RE.fullmatch(added.stdout), "stdout must be the token and nothing else"
    token = added.stdout.strip()
    assert mode(data) == 0o700
    assert mode(data / DB_NAME) == 0o600

    again = relay_cli("user", "add", "alice", data_dir=data)
    assert again.returncode != 0 and again.stdout == ""
    assert "user 'alice' already exists" in again.stderr
    assert "pio-remote relay token alice --regenerate" in again.stderr

    assert relay_cli("user", "add", "bob", data_dir=data).returncode == 0
    listed = relay_cli("user", "list", data_dir=data)
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["alice", "bob"]

    plain = relay_cli("token", "alice", data_dir=data)
    assert plain.returncode != 0 and "--regenerate" in plain.stderr

    regenerated = relay_cli("token", "alice", "--regenerate", data_dir=data)
    assert regenerated.returncode == 0, regenerated.stderr
    assert TOKEN_RE.fullmatch(regenerated.stdout)
    new_token = regenerated.stdout.strip()
    assert new_token != token

    stored = b"".join(p.read_bytes() for p in data.iterdir())
    assert token.encode() not in stored and new_token.encode() not in stored
    assert hash_token(new_token).encode() in stored and hash_token(token).encode() not in stored

    removed = relay_cli("user", "remove", "alice", data_dir=data)
    assert removed.returncode == 0, removed.stderr
    listed = relay_cli("user", "list", data_dir=data)
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["bob"]
    missing = relay_cli("user", "remove", "alice", data_dir=data)
    assert missing.returncode != 0 and "no user 'alice'" in missing.stderr
    missing = relay_cli("token", "nobody", "--regenerate", data_dir=data)
    assert missing.returncode != 0 and "relay user add nobody" in missing.stderr


def test_bad_names_and_options_are_refused_clearly(tmp_path: Path) -> None:
    data = tmp_path / "d"
    bad = relay_cli("user", "add", "no spaces/please", data_dir=data)
    assert bad.returncode != 0 and "invalid account name" in bad.stderr
    bind = relay_cli("serve", "--bind", "nowhere", data_dir=data)
    assert bind.returncode != 0 and "HOST:PORT" in bind.stderr
    timing = relay_cli(
        "serve", "--bind", "127.0.0.1:0", "--ping-interval", "5", "--idle-timeout", "5",
        data_dir=data,
    )  # fmt: skip
    assert timing.returncode != 0 and "--ping-interval" in timing.stderr
    tls = relay_cli("serve", "--bind", "127.0.0.1:0", "--tls-cert", __file__, data_dir=data)
    assert tls.returncode != 0 and "--tls-key" in tls.stderr


def test_commands_on_a_missing_database_create_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nodb"
    for args in (("user", "list"), ("user", "remove", "alice"), ("token", "alice", "--regenerate")):
        result = relay_cli(*args, data_dir=missing)
        assert result.returncode == 2, result
        assert result.stderr.splitlines() == [
            f"Error: no account database in '{missing}' (no {DB_NAME} there): check "
            f"--data-dir, or create the first account with 'pio-remote relay user add NAME "
            f"--data-dir {missing}'"
        ]
        assert not missing.exists()


def test_every_serve_option_has_help() -> None:
    result = relay_cli("serve", "--help", data_dir=Path("unused"))
    assert result.returncode == 0, result.stderr
    options = re.findall(r"^  (--[a-z-]+)(.*(?:\n {10,}.*)*)", result.stdout, re.M)
    limits = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(Limits)}
    assert {"--tls-cert", "--tls-key", *limits} <= {name for name, _ in options}
    for name, text in options:
        if name not in ("--help", "--log-level"):
            assert len(text.split()) > 3, f"{name} has no help text: {text!r}"


def test_limit_options_are_checked(tmp_path: Path) -> None:
    for args, problem in (
        (("--send-queue-bytes", "1000"), "below the minimum of 65536"),
        (("--send-queue-bytes", "lots"), "is not a size"),
        (("--accept-burst", "0"), "--accept-burst"),
        (("--max-connections-per-ip", "-1"), "--max-connections-per-ip"),
    ):
        result = relay_cli("serve", "--bind", "127.0.0.1:0", *args, data_dir=tmp_path / "d")
        assert result.returncode == 2 and problem in result.stderr, result
        assert "Traceback" not in result.stderr


def test_serve_on_a_busy_port_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = relay_cli("serve", "--bind", f"127.0.0.1:{port}", data_dir=tmp_path / "data")
    assert proc.returncode == 2  # a configuration error (docs/cli.md)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use: choose another "
        "--bind (port 0 picks a free one)"
    ]
