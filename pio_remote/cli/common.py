"""What every command shares: options, running trio, and turning errors into messages.

Every error a command can meet is listed once, in ``ERRORS``, with its exit code
(docs/cli.md "Exit codes"). It becomes one line on stderr, never a traceback.
This module imports nothing heavy (no trio, no rich): ``pio-remote --version``
and ``--help`` stay fast, and each command pays only for what it uses.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import click

from pio_remote.net import groups

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

EXIT_OK = 0
EXIT_ERROR = 1  # the message explains it: offline agent, refused session, failed upload...
EXIT_USAGE = 2  # usage or configuration error, or stopped for good: retrying will not help
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
PORT_HELP = "Port name, or a glob (default: the only USB port, or the only port)."

# (module, class, exit code). Named by module so that checking an exception imports
# nothing: an exception of a class whose module was never imported cannot occur.
ERRORS: tuple[tuple[str, str, int], ...] = (
    ("pio_remote.home", "ConfigError", EXIT_USAGE),
    ("pio_remote.wire.invite", "InviteError", EXIT_USAGE),
    ("pio_remote.project", "ProjectError", EXIT_USAGE),
    ("pio_remote.client.monitor.options", "ChoiceError", EXIT_USAGE),
    ("pio_remote.agent.service", "AgentStopped", EXIT_USAGE),
    ("pio_remote.net.link", "RelayError", EXIT_ERROR),  # EXIT_USAGE for FATAL_RELAY_CODES
    ("pio_remote.client.api", "RemoteError", EXIT_ERROR),
    ("pio_remote.net.channel", "ChannelClosed", EXIT_ERROR),
    ("pio_remote.wire.transfer", "TransferError", EXIT_ERROR),
    ("pio_remote.wire.session", "ProtocolError", EXIT_ERROR),
    ("trio", "TooSlowError", EXIT_ERROR),
)
# RelayError codes after which trying again cannot work until the user acts: a
# refused or revoked token, another agent took the name, an incompatible relay, and
# (wsclient.ConnectError kinds) a malformed URL, a TLS mismatch or untrusted
# certificate, a server that is not a relay.
FATAL_RELAY_CODES = frozenset(
    {"auth", "token_revoked", "replaced", "version", "bad_url", "tls", "not_relay"}
)


def stop_signals(*, interrupt: bool = True) -> tuple[int, ...]:
    """SIGINT (unless ``interrupt`` is False), SIGTERM and SIGHUP (an ssh drop) where the
    OS has them: Windows has no SIGHUP, so it is looked up, never named."""
    names = ("SIGINT", "SIGTERM", "SIGHUP") if interrupt else ("SIGTERM", "SIGHUP")
    return tuple(sig for name in names if (sig := getattr(signal, name, None)) is not None)


# C0 and C1 control characters, DEL, and the bidi overrides that can reorder what a
# terminal shows: none of them may reach the terminal from a remote string.
_CONTROLS = [*range(0x00, 0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F)]
_CONTROLS += [*range(0x2066, 0x206A)]
_SCRUB = {c: None for c in _CONTROLS} | {0x09: " ", 0x0A: " ", 0x0D: " "}


def clean(text: object) -> str:
    """A remote string made safe for a terminal: no escape sequences, one line.

    Agents, devices and the relay choose these strings; an ESC or OSC sequence in
    one could move the cursor, rewrite earlier output or retitle the terminal.
    """
    return str(text).translate(_SCRUB)


def plain(text: object) -> Text:
    """A remote string for a rich table or console: cleaned, and never read as markup."""
    from rich.text import Text

    return Text(clean(text))


def console(stderr: bool = False) -> Console:
    """Rich output that never wraps or truncates when a script reads it."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=10_000, soft_wrap=True, no_color=True)


@dataclass
class Options:
    agents: list[str] = field(default_factory=list)


def exit_code(exc: BaseException) -> int | None:
    """The documented exit code for an error a user can meet, or None for a bug."""
    for module, name, code in ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            if name == "RelayError" and getattr(exc, "code", "") in FATAL_RELAY_CODES:
                return EXIT_USAGE
            return code
    return None


def _message(exc: BaseException) -> str:
    text = str(exc)
    if type(exc).__name__ == "TooSlowError":
        text = text or "timed out"
    return clean(text) or type(exc).__name__


def user_error(exc: BaseException) -> tuple[str, int] | None:
    """(one line, exit code) for an error the user should see, looking inside groups.

    The first error the table knows wins over the cancellations and follow-on
    errors that trio collects beside it.
    """
    leaves = list(groups.leaves(exc))
    for leaf in leaves:
        if isinstance(leaf, KeyboardInterrupt):
            return "Aborted.", EXIT_INTERRUPTED
    for leaf in leaves:
        code = exit_code(leaf)
        if code is not None:
            return _message(leaf), code
    return None


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print one line on stderr and exit: the single way commands report errors."""
    click.echo(message if message == "Aborted." else f"Error: {clean(message)}", err=True)
    sys.exit(code)


def handle(exc: BaseException) -> None:
    """Exit with one line for a known error (even inside an exception group); else return."""
    if isinstance(exc, SystemExit | click.exceptions.Exit):
        return
    known = user_error(exc)
    if known is not None:
        fail(*known)
    for leaf in groups.leaves(exc):
        if isinstance(leaf, click.ClickException):
            raise leaf from None  # click prints it and exits with its code
    leaves = list(groups.leaves(exc))
    if len(leaves) == 1 and isinstance(leaves[0], SystemExit):
        raise leaves[0] from None


def run(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run a coroutine under trio; errors the user can meet become one line and an exit."""
    import trio

    try:
        return trio.run(fn, *args)
    except BaseException as exc:
        handle(exc)
        raise
