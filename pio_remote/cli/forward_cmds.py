"""`pio-remote device forward`: a remote serial port as a local RFC 2217 server, or with
`--tcp HOST:PORT` a TCP server on the agent's side, here.

Kept apart from the monitor's commands so that forwarding never imports the console
(and its terminal modules, which Windows lacks).
"""

from __future__ import annotations

import click
import trio

from pio_remote.cli.common import PORT_HELP, Options, clean, run, stop_signals
from pio_remote.client import forward_serial as forward
from pio_remote.client.api import Client
from pio_remote.client.forward_tcp import AgentLine, TcpForwarder
from pio_remote.client.monitor import options as monitor_options
from pio_remote.client.targets import display_name
from pio_remote.net import tunnel
from pio_remote.net.groups import first_leaf
from pio_remote.wire.serial_events import SerialSettings


@click.command("forward")
@click.option("-p", "--port", help=PORT_HELP)
@click.option(
    "-b",
    "--baud",
    type=int,
    default=9600,
    show_default=True,
    help="Baud rate until the connecting tool sets its own.",
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Where to serve; loopback unless you give another address. Default: "
    "127.0.0.1:4000, with --tcp 127.0.0.1 and the remote port's number.",
)
@click.option(
    "--tcp",
    metavar="HOST:PORT",
    help="Forward TCP to this server on the agent's side (a GDB server: OpenOCD, J-Link, "
    "QEMU) instead of a serial port; the agent's agent.toml must allow it.",
)
@click.pass_obj
def forward_cmd(
    opts: Options, port: str | None, baud: int, listen: str | None, tcp: str | None
) -> None:
    """Serve a remote port locally as rfc2217://HOST:PORT (for pyserial, esptool, PlatformIO),
    or with --tcp a TCP server next to the board (for gdb)."""
    if tcp is not None:
        if port is not None:
            raise click.UsageError("-p/--port and --tcp forward different things: give one")
        forward_tcp(opts, tcp, listen)
        return
    listen = listen or "127.0.0.1:4000"
    try:
        host, number = forward.parse_listen(listen)
        settings = SerialSettings(baudrate=baud)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    forwarder = forward.Forwarder(opts.agents, port, settings, {})

    async def main() -> None:
        try:
            listeners = await trio.open_tcp_listeners(number, host=host)
        except OSError as exc:
            why = exc.strerror or exc
            raise click.ClickException(f"cannot listen on {listen}: {why}") from None
        bound = listeners[0].socket.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(forwarder.keep_session)  # chooses the port, or fails
                nursery.start_soon(trio.serve_listeners, forwarder.handle, listeners)
                if host not in forward.LOOPBACK_HOSTS:
                    forward.note(
                        f"warning: listening on {host}: anyone who can reach it can use the "
                        "port (RFC 2217 has no authentication)"
                    )
                shown = f"[{host}]" if ":" in host else host
                print(
                    f"Forwarding {clean(forwarder.agent)}:{clean(forwarder.port)} as "
                    f"rfc2217://{shown}:{bound} "
                    "(Ctrl+C to stop)",
                    flush=True,
                )
        except BaseExceptionGroup as group:
            leaf = first_leaf(group)
            if isinstance(leaf, monitor_options.ChoiceError):
                raise leaf from None  # one line and exit 2 (cli/common.py ERRORS)
            raise

    run(main)


def forward_tcp(opts: Options, target: str, listen: str | None) -> None:
    """Serve the agent-side ``target`` at ``listen`` (default: loopback, the same port)."""
    try:
        dest = tunnel.canonical(target)
        host, number = forward.parse_listen(listen or str(tunnel.split_hostport(dest)[1]))
    except ValueError as exc:
        raise click.UsageError(f"--tcp/--listen: {exc}") from None

    async def main() -> None:
        agent = await _one_agent(opts)
        problem = ""
        async with trio.open_nursery() as nursery:
            line = AgentLine(agent, {}, nursery)
            forwarder = TcpForwarder(line, dest)
            await forwarder.check()
            try:
                listeners = await trio.open_tcp_listeners(number, host=host)
            except OSError as exc:
                problem = f"cannot listen on {host}:{number}: {exc.strerror or exc}"
                nursery.cancel_scope.cancel()
            else:
                nursery.start_soon(_stop_on_term, nursery.cancel_scope)
                nursery.start_soon(trio.serve_listeners, forwarder.handle, listeners)
                _announce(host, listeners[0].socket.getsockname()[1], dest, agent)
        if problem:
            raise click.ClickException(problem)

    run(main)


def _announce(host: str, bound: int, dest: str, agent: str) -> None:
    if host not in forward.LOOPBACK_HOSTS:
        forward.note(
            f"warning: listening on {host}: anyone who can reach it reaches {dest} "
            f"on agent '{agent}'"
        )
    shown = f"[{host}]" if ":" in host else host
    print(f"Forwarding {shown}:{bound} to {dest} on agent '{agent}' (Ctrl+C to stop)", flush=True)


async def _one_agent(opts: Options) -> str:
    if len(opts.agents) == 1:
        return opts.agents[0]
    online: list[str] = []
    if not opts.agents:
        async with Client.connect() as client:
            online = [display_name(client, a.agent) for a in await client.list_agents()]
    try:
        return monitor_options.choose_agent(opts.agents, online)
    except monitor_options.ChoiceError as exc:  # as `device monitor` reports it
        raise click.ClickException(str(exc)) from None


async def _stop_on_term(scope: trio.CancelScope) -> None:
    """SIGTERM and SIGHUP (where the OS has it) close every connection, like Ctrl+C."""
    with trio.open_signal_receiver(*stop_signals(interrupt=False)) as signals:
        async for _ in signals:
            forward.note("stopping: closing every forwarded connection")
            scope.cancel()
            return
