"""The agent process: an outbound relay connection and one nursery per client session.

Task tree:

    agent ── link to relay (reconnects with backoff and jitter)
             └── session (one per client channel: handshake, then calls)
                  └── call (one per request: device list, monitor, upload...)

Cancelling a session (client gone, tampering, relay lost) cancels every call
under it, which closes ports and kills uploader process groups.
"""

from __future__ import annotations

import logging
import secrets
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from pio_remote import daemon, home
from pio_remote.agent import config as agent_config
from pio_remote.agent import lease_calls, pairing
from pio_remote.agent.handlers import CallContext, CallFailed, bind_params
from pio_remote.agent.handshake import Accept, Refuse, decide
from pio_remote.agent.jobs import workspace
from pio_remote.agent.registry import HANDLERS
from pio_remote.agent.serial import backend
from pio_remote.agent.serial.portlock import CALLER
from pio_remote.agent.state import AgentChannel, AgentState
from pio_remote.net import link, retry
from pio_remote.net.channel import Call, ChannelClosed
from pio_remote.net.link import Link, RelayError
from pio_remote.wire import e2e, session
from pio_remote.wire.envelope import Frame

log = logging.getLogger("pio_remote.agent")

# Authenticated sessions at once on one agent; each holds at most MAX_OPEN_CALLS calls.
# Channels still waiting for their handshake are not sessions: agent.toml's
# max_pending_handshakes[_per_account] bound them (pending.py).
MAX_SESSIONS = 256
# A connection that lasted this long was healthy: the next failure starts over.
BACKOFF_RESET_AFTER = 10.0
# Relay answers that retrying cannot fix: another process with our own key took
# our name (it serves now), or our token is wrong or revoked. The agent stops
# and says why, with exit code 2 (a systemd unit does not restart it).
FATAL_RELAY_CODES = frozenset({"replaced", "token_revoked", "auth", "version"})
# Our name is held by an agent with another key. That can pass (the other one
# stops, or a dead connection of ours before a key change times out), so the
# agent exits 1 with the relay's one line, and systemd's Restart=on-failure tries
# again later; the running agent is never disturbed.
NAME_TAKEN = "name_taken"


class AgentStopped(Exception):
    """The agent cannot go on (replaced by a process with its own key, or its token was
    refused): exit 2, which systemd does not restart."""


class Rehome(Exception):
    """Reconnect at once: now we know the agent=OWNER/NAME our node is chosen by."""


def internal_error(method: str, exc: BaseException) -> tuple[bool, Any, str, str]:
    """Log a handler's bug in full here; the client gets only a short id to quote."""
    error_id = secrets.token_hex(4)
    log.error("call %s failed (error id %s)", method, error_id, exc_info=exc)
    message = f"{method} failed with an internal error (id {error_id}): see the agent's log"
    return False, None, "internal", message


async def _invoke(channel: AgentChannel, call: Call) -> tuple[bool, Any, str, str]:
    """Run the handler; returns (ok, value, error code, error message)."""
    handler = HANDLERS.get(call.method)
    if channel.pairing_invite is not None and call.method != "pair.confirm":
        return False, None, "not_paired", pairing.PAIRING_ONLY
    if handler is None:
        return False, None, "unknown_method", f"agent does not support '{call.method}'"
    ctx = CallContext(channel.agent, channel, call)
    # This call's task only: port locks check leases with it (None: no lease identity).
    CALLER.set(getattr(channel, "caller", None))
    try:
        params = bind_params(handler, call.method, call.params)
        return True, await handler(ctx, **params), "", ""
    except CallFailed as exc:
        return False, None, exc.code, exc.message
    except ChannelClosed as exc:
        return False, None, "closed", str(exc)
    except Exception as exc:  # a bug in a handler must not take the agent down
        return internal_error(call.method, exc)


async def run_call(channel: AgentChannel, call: Call) -> None:
    """Run one handler in its own cancel scope and always end the call with a RESULT."""
    outcome: tuple[bool, Any, str, str] = (False, None, "cancelled", "cancelled by client")
    try:
        with trio.CancelScope() as scope:
            call.cancel_scope = scope
            outcome = await _invoke(channel, call)
    except BaseExceptionGroup as group:
        # A handler's own nursery: this call's cancellation arrives together with the
        # errors of its children (ChannelClosed when the session died). Those end the
        # call; a cancellation from above (agent shutdown) must still propagate.
        cancelled, errors = group.split(trio.Cancelled)
        bugs = errors.split(ChannelClosed)[1] if errors is not None else None
        if bugs is not None:
            outcome = internal_error(call.method, bugs)
        if cancelled is not None:
            raise cancelled from None
    finally:
        channel.calls.pop(call.call_id, None)
        channel.end_input(call)
        channel.puts.ended(channel.put_keys.pop(call.call_id, None))
    if channel.error is not None:
        channel.session.finish(call.call_id)
        return
    ok, value, code, message = outcome
    with trio.CancelScope(shield=True), trio.move_on_after(5):
        try:
            await channel.send(
                lambda: channel.session.send_result(
                    call.call_id, ok, value, code=code, message=message
                )
            )
        except (ChannelClosed, RelayError):
            pass


async def serve_session(
    agent: AgentState,
    lnk: Link,
    channel_id: int,
    client_account: str,
    early: trio.MemoryReceiveChannel[Frame],
    ticket: int,
) -> None:
    try:
        frame, reason = await agent.pending.first_frame(ticket, client_account, early)
        if frame is None:
            await lnk.close_channel(channel_id, reason)
            return
        if agent.sessions >= MAX_SESSIONS:
            await lnk.close_channel(channel_id, "agent busy: too many sessions")
            return
        agent.sessions += 1
        try:
            await _serve_session(agent, lnk, channel_id, client_account, frame, early)
        finally:
            agent.sessions -= 1
    finally:
        agent.pending.done(ticket)
        lnk.unregister(channel_id)


async def _serve_session(
    agent: AgentState,
    lnk: Link,
    channel_id: int,
    client_account: str,
    frame: Frame,
    early: trio.MemoryReceiveChannel[Frame],
) -> None:
    """Apply the handshake decision to the client's first message, then serve the calls."""
    decision = decide(
        frame.payload,
        agent.agent_id,
        agent.identity.private,
        pairing.trust_view(agent.home, agent.identity.public),
    )
    if isinstance(decision, Refuse):
        log.info("session from account %s refused: %s", client_account, decision.log)
        if decision.reply is not None:
            await lnk.send_data(channel_id, decision.reply)
        await lnk.close_channel(channel_id, decision.close_reason)
        return
    await _run_session(agent, lnk, channel_id, client_account, decision, early)


async def _run_session(
    agent: AgentState,
    lnk: Link,
    channel_id: int,
    client_account: str,
    accepted: Accept,
    early: trio.MemoryReceiveChannel[Frame],
) -> None:
    client_key = accepted.client_key
    channel = AgentChannel(
        agent,
        client_key,
        client_account,
        accepted.pairing_invite,
        lnk,
        channel_id,
        accepted.transport,
        session.Session(session.Role.AGENT),
        run_call=run_call,
    )
    channel.role = accepted.role
    async with trio.open_nursery() as nursery:
        # The nursery exists before the client can send a CALL: one that arrives
        # right after our reply must find somewhere to start its handler.
        channel.nursery = nursery
        lnk.register(channel_id, channel.on_frame)
        # Frames the link read after the handshake, while this task waited for its
        # turn (the client's CLOSE, when it gave up at once), went to ``early``.
        while True:
            try:
                channel.on_frame(early.receive_nowait())
            except trio.WouldBlock:
                break
        if channel.error is None:
            await lnk.send_data(channel_id, accepted.reply)
        log.info(
            "session from %s (%s, account %s)",
            e2e.fingerprint(client_key),
            accepted.role or "pairing",
            client_account,
        )
        await channel.closed.wait()
        nursery.cancel_scope.cancel()
    log.info("session from %s ended: %s", e2e.fingerprint(client_key), channel.error)


async def run_link(agent: AgentState, creds: home.Credentials) -> None:
    hello = {
        "role": "agent",
        "name": agent.name,
        "shares": agent.shares,
        "key": agent.identity.public.hex(),
    }
    # The load balancer of a relay cluster sends us, and our clients, to the
    # node that agent=OWNER/NAME hashes to. Before the first WELCOME we do not
    # know OWNER: then we connect once to learn it, and again (without a pause).
    asked = agent.agent_id or agent.name
    async with link.connect(creds.relay, creds.token, hello, {"agent": asked}) as lnk:
        agent.agent_id = f"{lnk.account}/{agent.name}"
        if lnk.node is not None and asked != agent.agent_id:
            raise Rehome()
        log.info(
            "agent %s online via %s (key %s)",
            agent.agent_id,
            creds.relay,
            agent.identity.fingerprint,
        )
        daemon.say_ready(f"agent {agent.agent_id} online (key {agent.identity.fingerprint})")
        daemon.notify(f"READY=1\nSTATUS=agent {agent.agent_id} online via {creds.relay}")
        nursery = lnk.nursery
        assert nursery is not None

        def on_open(channel_id: int, client_account: str) -> None:
            if agent.sessions >= MAX_SESSIONS:
                nursery.start_soon(lnk.close_channel, channel_id, "agent busy: too many sessions")
                return
            ticket = agent.pending.admit(client_account)  # may make room: see pending.py
            send, receive = trio.open_memory_channel[Frame](2)

            def early(frame: Frame) -> None:
                try:
                    send.send_nowait(frame)
                except trio.WouldBlock:
                    pass

            lnk.register(channel_id, early)
            nursery.start_soon(
                serve_session, agent, lnk, channel_id, client_account, receive, ticket
            )

        lnk.on_open = on_open
        await trio.sleep_forever()


async def run_agent(agent: AgentState, creds: home.Credentials) -> None:
    """Stay connected until cancelled; back off with jitter while the relay is away."""
    attempt = 0
    while True:
        started = trio.current_time()
        try:
            await run_link(agent, creds)
        except Rehome:
            continue
        except RelayError as exc:
            text = str(exc)
            if exc.code in FATAL_RELAY_CODES:
                raise AgentStopped(text) from None
            if exc.code == NAME_TAKEN:
                raise  # exit 1 with the relay's line (whose key, from where, and -n)
            log.warning("%s", text)
            print(f"agent: {text}; reconnecting", flush=True)
            daemon.notify(f"STATUS=agent: {text}; reconnecting")
        if trio.current_time() - started > BACKOFF_RESET_AFTER:
            attempt = 0
        attempt += 1
        await trio.sleep(retry.backoff(attempt - 1))


# SIGHUP is what a dropped ssh session sends: it stops the agent like SIGTERM, so
# uploads are cancelled and their process groups killed (agent.toml is read only
# at start: restart the agent to apply changes).
# Windows has no SIGHUP.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


async def main(
    name: str | None,
    shares: list[str],
    port_globs: list[str],
    working_dir: Path | None,
    allow_client_commands: bool = False,
    serial_backend: str | None = None,
) -> None:
    # Installed first: a signal during start-up must not kill us the default way.
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        home_path = home.home_dir()
        config = agent_config.load(home_path)
        config.port_globs = [*config.port_globs, *port_globs]
        config.allow_client_commands = config.allow_client_commands or allow_client_commands
        try:
            config.serial_backend = backend.choose(serial_backend or config.serial_backend)
        except ValueError as exc:
            raise home.ConfigError(f"--serial-backend: {exc}") from None
        log.info("serial ports: %s backend", config.serial_backend)
        agent = AgentState(
            name=name or config.name or socket.gethostname(),
            home=home_path,
            identity=home.load_identity(home_path),
            config=config,
            shares=[*config.shares, *shares],
            working_dir=working_dir,
        )
        creds = home.load_credentials(home_path)
        lease_calls.restore(agent)
        await trio.to_thread.run_sync(
            workspace.remove_stale_jobs, working_dir or home_path / "work"
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope)
            agent.keeper = nursery
            await run_agent(agent, creds)


async def _stop_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for signum in signals:
        daemon.notify("STOPPING=1")
        log.info("stopping on signal %s", signal.Signals(signum).name)
        scope.cancel()
        return
