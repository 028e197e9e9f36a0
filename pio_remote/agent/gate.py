"""The one way in for every name and path a client sends (docs/security.md, "The gate").

A paired client may flash the boards the owner offers and nothing else, so
every handler passes what it was sent through here before it touches a file
or a port:

- **names** (an environment, a firmware file, a project id) are one path
  component: never empty, ``.``, ``..``, absolute, with a separator or a NUL;
- **relative paths** (a synced file, a test suite) are such components joined
  by ``/``;
- **files** are reached from the job root one directory at a time with
  ``O_NOFOLLOW`` (``dir_fd``), so a symlink anywhere on the way is refused,
  and are created with ``O_EXCL``: nothing the agent writes for a client goes
  through a symlink or over a file that is already there;
- **ports** are exactly a serial device the agent lists, keyed on one
  canonical name per device so that aliases share a lease, or a network name
  (an IP address or a host name) for OTA; a port glob never matches across
  ``/`` nor a ``.``/``..`` component.

Checks on names, globs and ports (``port`` against a given list) are pure;
``offered_port`` lists the agent's devices, and the file functions do the
system calls that make the rules hold on disk (a check on a path string
alone could be raced).
"""

from __future__ import annotations

import errno
import fnmatch
import ipaddress
import os
import re
import shutil
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pio_remote.agent.config import AgentConfig
from pio_remote.agent.handlers import CallFailed
from pio_remote.agent.serial import ports

MAX_NAME = 255
MAX_PATH = 4096
_ENV = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_SUITE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_PROJECT_ID = re.compile(r"^[0-9a-f]{16,64}$")
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?$")
_COM = re.compile(r"(?i)^com\d+$")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# ---- names -------------------------------------------------------------------------------


def _bad(what: str, value: object, why: str) -> CallFailed:
    return CallFailed("bad_params", f"{what} {value!r} {why}")


def name(value: object, what: str = "file name") -> str:
    """One path component the agent may create in a directory of its own choosing."""
    if not isinstance(value, str) or not value:
        raise _bad(what, value, "must be a non-empty string")
    if "\0" in value or "/" in value or "\\" in value or value in (".", ".."):
        raise _bad(what, value, "must be a plain name: no '/', '\\', NUL, '.' or '..'")
    if len(value.encode(errors="surrogatepass")) > MAX_NAME:
        raise _bad(what, value[:40] + "...", f"is longer than {MAX_NAME} bytes")
    return value


def relpath(value: object, what: str = "path") -> tuple[str, ...]:
    """A relative path of plain names joined by '/': its components."""
    if not isinstance(value, str) or not value:
        raise _bad(what, value, "must be a non-empty string")
    if len(value) > MAX_PATH:
        raise _bad(what, value[:40] + "...", f"is longer than {MAX_PATH} characters")
    if value.startswith("/"):
        raise _bad(what, value, "must be relative, not absolute")
    return tuple(name(part, f"{what} component of") for part in value.split("/"))


def env(value: object) -> str:
    """A PlatformIO environment name: it becomes a directory and a `pio -e` argument."""
    text = name(value, "environment name")
    if not _ENV.match(text):
        raise _bad("environment name", text, "may hold only letters, digits, '_', '.' and '-'")
    return text


def suite(value: object) -> str:
    """A test suite: a path under test/ given to `pio test -f`, so never an option."""
    parts = relpath(value, "test suite")
    if not all(_SUITE_PART.match(p) for p in parts):
        raise _bad("test suite", value, "may hold only letters, digits, '_', '.', '-' and '/'")
    return "/".join(parts)


def project_id(value: object) -> str:
    if not isinstance(value, str) or not _PROJECT_ID.match(value):
        raise CallFailed("bad_params", "project must be 16 to 64 lowercase hex digits")
    return value


# ---- files under a root ---------------------------------------------------------------------


def inside(root: Path, path: Path, what: str) -> tuple[str, ...]:
    """An absolute path the agent derived from client options, as components under root.

    Lexical: '..' anywhere, or a path outside root, is refused (not normalised away,
    since '..' after a symlink means something else on disk).
    """
    parts = Path(path).parts
    base = Path(root).parts
    rest = parts[len(base) :]
    if parts[: len(base)] != base or any(p in ("", ".", "..") or "\0" in p for p in rest):
        raise CallFailed(
            "bad_project",
            f"{what} {str(path)!r} is outside the project on the agent: "
            "build_dir and workspace_dir must stay inside it",
        )
    return rest


def open_dir(root: Path, parts: Sequence[str], create: bool = False) -> int:
    """A descriptor of root/parts, walked one directory at a time without following links."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _refused(root, parts, exc) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refused(root: Path, parts: Sequence[str], exc: OSError) -> CallFailed:
    where = "/".join(parts) or "."
    links = (errno.ELOOP, errno.ENOTDIR)
    why = "a symlink or not a directory" if exc.errno in links else exc.strerror
    return CallFailed("bad_path", f"{where} under {root.name}/ is {why}: refused")


def place(src: Path, root: Path, parts: Sequence[str]) -> None:
    """Hard-link src as root/parts, or copy it there: always a new file, never a replacement."""
    fd = open_dir(root, parts[:-1], create=True)
    try:
        try:
            os.link(src, parts[-1], dst_dir_fd=fd)  # EEXIST for a file, a dir or a symlink
            return
        except FileExistsError:
            raise _exists(parts) from None
        except OSError:  # another file system, or links not allowed: copy instead
            pass
        _copy_new(src, fd, parts[-1], parts)
    finally:
        os.close(fd)


def replace(src: Path | bytes, root: Path, parts: Sequence[str]) -> None:
    """Copy src (a file, or the bytes) to root/parts through a new temp file renamed
    over the entry.

    The rename replaces a directory entry inside the walked tree (a symlink there is
    replaced, not followed); no existing file is ever written to.
    """
    fd = open_dir(root, parts[:-1], create=True)
    tmp = f".{parts[-1][:200]}.{os.urandom(4).hex()}.tmp"
    try:
        _copy_new(src, fd, tmp, parts, durable=True)  # a crash leaves the old or the new
        os.replace(tmp, parts[-1], src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        try:
            os.unlink(tmp, dir_fd=fd)
        except FileNotFoundError:
            pass
        os.close(fd)


def _copy_new(
    src: Path | bytes, dir_fd: int, leaf: str, parts: Sequence[str], durable: bool = False
) -> None:
    try:
        out = os.open(leaf, _NEW_FILE, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        raise _exists(parts) from None
    with os.fdopen(out, "wb") as fout:
        if isinstance(src, bytes):
            fout.write(src)
        else:
            with open(src, "rb") as fin:
                shutil.copyfileobj(fin, fout)
        if durable:
            fout.flush()
            os.fsync(fout.fileno())


def _exists(parts: Sequence[str]) -> CallFailed:
    return CallFailed(
        "bad_path", f"{'/'.join(parts)} already exists in the job: the agent never overwrites"
    )


def remove(root: Path, parts: Sequence[str]) -> None:
    """Unlink root/parts if it is there, never through a symlinked directory."""
    try:
        fd = open_dir(root, parts[:-1])
    except (CallFailed, FileNotFoundError):
        return  # its directory is gone, or is a symlink: nothing of ours to remove
    try:
        os.unlink(parts[-1], dir_fd=fd)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        pass
    finally:
        os.close(fd)


def read_text(root: Path, parts: Sequence[str]) -> str:
    """A regular file under root, read without following any symlink (a build may have
    swapped platformio.ini for a link to the agent's key); FileNotFoundError if absent."""
    fd = open_dir(root, parts[:-1])
    try:
        try:
            fh = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise _refused(root, parts, exc) from None
    finally:
        os.close(fd)
    with os.fdopen(fh, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise CallFailed("bad_path", f"{'/'.join(parts)} is not a regular file: refused")
        return f.read().decode()


def regular_file(root: Path, parts: Sequence[str]) -> bool:
    """Whether root/parts is a regular file reached without following any symlink."""
    try:
        fd = open_dir(root, parts[:-1])
    except (CallFailed, OSError):
        return False
    try:
        return stat.S_ISREG(os.stat(parts[-1], dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        return False
    finally:
        os.close(fd)


# ---- ports ------------------------------------------------------------------------------------


def glob_match(value: str, pattern: str) -> bool:
    """fnmatch one '/'-separated component at a time: '*' never crosses '/', and a name
    with an empty, '.' or '..' component (other than a leading '/') never matches."""
    names, globs = value.split("/"), pattern.split("/")
    if len(names) != len(globs):
        return False
    for i, (n, g) in enumerate(zip(names, globs, strict=True)):
        if n in (".", "..") or (n == "" and (i > 0 or g != "")):
            return False
        if not fnmatch.fnmatchcase(n, g):
            return False
    return True


def network_name(value: str) -> str | None:
    """The canonical form of an IP address or host name (OTA), or None if it is neither."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    labels = value.split(".")
    if len(value) > 253 or not all(_LABEL.match(label) for label in labels):
        return None
    if labels[-1].isdigit():
        return None  # '10.1' reads as an address to inet_aton: not a host name
    if _COM.match(value):
        return None  # a Windows serial port, not a host
    return value.lower()


@dataclass(frozen=True)
class Port:
    """A port a client may use: ``name`` as it reaches an uploader ($UPLOAD_PORT),
    ``key`` what leases, port locks and monitors are kept under."""

    name: str
    key: str
    device: bool


def port(value: object, listed: Iterable[str], *, network: bool = True) -> Port | None:
    """A listed serial device, exactly as listed, or (with ``network``) an OTA name;
    None for anything else (another path, an alias such as ``/dev/./ttyACM0``)."""
    if not isinstance(value, str) or not value or "\0" in value or len(value) > MAX_PATH:
        return None
    if "/" in value:
        key = ports.device_keys(listed).get(value)
        return Port(value, key, True) if key is not None else None
    canonical = network_name(value) if network else None
    return Port(value, canonical, False) if canonical is not None else None


def offered_port(config: AgentConfig, value: object, *, network: bool = True) -> Port | None:
    """``port`` against what this agent lists now; a network name costs no listing."""
    needs_list = isinstance(value, str) and "/" in value
    return port(value, ports.offered(config) if needs_list else (), network=network)
