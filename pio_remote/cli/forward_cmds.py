"""`pio-remote device forward --tcp HOST:PORT`: a TCP server on the agent's side, here.

`device forward` itself lives with the monitor commands (its serial form is an
RFC 2217 server); with `--tcp` it hands over to `forward_tcp` below.
"""

from __future__ import annotations

import signal

import click
import trio

from pio_remote.cli.common import Options, run
from pio_remote.client import forward_serial as forward
from pio_remote.client.api import Client
from pio_remote.client.forward_tcp import AgentLine, TcpForwarder
from pio_remote.client.monitor import options as monitor_options
from pio_remote.client.targets import display_name
from pio_remote.net import tunnel


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
    """SIGTERM and SIGHUP close the listener and every connection, like Ctrl+C."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
        async for _ in signals:
            forward.note("stopping: closing every forwarded connection")
            scope.cancel()
            return
