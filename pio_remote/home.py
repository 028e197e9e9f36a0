"""The home directory: identity key, relay credentials, and the lock its files share.

Everything secret is written with mode 0600 through a temp file and a rename,
so a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pio_remote.wire import e2e

ENV_HOME = "PIO_REMOTE_HOME"
ENV_RELAY = "PIO_REMOTE_RELAY"
ENV_TOKEN = "PIO_REMOTE_AUTH_TOKEN"

IDENTITY_FILE = "identity.key"
CREDENTIALS_FILE = "credentials.json"
# Every read-modify-write of the key tables (the agent's allow-list and invites, the
# client's pins) holds an exclusive lock on this file, so `agent invite`, `agent
# clients --revoke` and a running agent's pairing never interleave (two writers would
# bring back an invite the other just consumed).
LOCK_FILE = ".trust.lock"
# How the key tables spell a public key.
HEX_KEY = re.compile(r"^[0-9a-f]{64}$")


class ConfigError(Exception):
    """Missing or broken local configuration; the message says how to fix it."""


def home_dir() -> Path:
    """The state directory, made on first use; a ConfigError if it cannot be used."""
    path = Path(os.environ.get(ENV_HOME) or Path.home() / ".pio-remote")
    where = f"{ENV_HOME}={path}" if os.environ.get(ENV_HOME) else str(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"{where} is not a directory: point {ENV_HOME} at a directory (made if missing)"
        )
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create {where}: {exc.strerror or exc}; set {ENV_HOME} to a directory "
            "you can write"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{path} is not writable by this user: fix its permissions "
            f"('chmod u+rwx {path}') or set {ENV_HOME} to a directory you own"
        )
    return path


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def write_private(path: Path, data: bytes) -> None:
    """Atomically write a file only its owner can read."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise ConfigError(
            f"cannot write {path}: {_why(exc)}: make {path.parent} writable, or set {ENV_HOME}"
        ) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {_why(exc)}: fix its permissions") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}): fix or remove it") from None


def write_json(path: Path, obj: Any) -> None:
    write_private(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@contextmanager
def locked(home: Path) -> Iterator[None]:
    """Hold the home's lock (exclusive, across processes) for a read-modify-write.

    The only place that knows how the lock is taken: ``filelock`` takes flock on POSIX
    and msvcrt's byte lock on Windows, so clients and agents on every OS lock the same
    way. Imported here: only writers pay for it.
    """
    from filelock import FileLock

    with FileLock(home / LOCK_FILE, mode=0o600):
        yield


@dataclass(frozen=True)
class Identity:
    private: bytes
    public: bytes

    @property
    def fingerprint(self) -> str:
        return e2e.fingerprint(self.public)


def load_identity(home: Path) -> Identity:
    """This machine's static key; made on first use. Agent and client share it."""
    path = home / IDENTITY_FILE
    try:
        private = bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        private = e2e.generate_private_key()
        write_private(path, (private.hex() + "\n").encode())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {_why(exc)}: fix its permissions") from None
    except ValueError:
        raise ConfigError(f"{path} is not a hex key: remove it to make a new identity") from None
    if len(private) != e2e.KEY_SIZE:
        raise ConfigError(f"{path} holds {len(private)} bytes, not {e2e.KEY_SIZE}")
    return Identity(private, e2e.public_key(private))


@dataclass(frozen=True)
class Credentials:
    relay: str
    token: str


def save_credentials(home: Path, relay: str, token: str) -> None:
    write_json(home / CREDENTIALS_FILE, {"relay": relay, "token": token})


def load_credentials(home: Path, relay: str | None = None, token: str | None = None) -> Credentials:
    """Explicit values, then the environment (CI), then what `account login` stored."""
    path = home / CREDENTIALS_FILE
    stored = read_json(path, {})
    if not isinstance(stored, dict) or not all(isinstance(v, str) for v in stored.values()):
        raise ConfigError(
            f'{path} must hold {{"relay": URL, "token": TOKEN}}: log in again with '
            "'pio-remote account login' (or remove it)"
        )
    relay = relay or os.environ.get(ENV_RELAY) or stored.get("relay")
    token = token or os.environ.get(ENV_TOKEN) or stored.get("token")
    if not relay or not token:
        raise ConfigError(
            "no relay account configured: run 'pio-remote account login --relay URL' "
            f"or set {ENV_RELAY} and {ENV_TOKEN}"
        )
    return Credentials(relay.rstrip("/"), token)
