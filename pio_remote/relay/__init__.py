"""The blind relay: authenticates accounts and forwards opaque frames.

It never imports Noise or pyserial; it reads only the routing envelope.

Modules, outside in:

- ``cli``: ``pio-remote relay serve | user add/list/remove | token NAME --regenerate``
- ``server``: the trio shell (listeners, account watcher, keepalive sweeper)
- ``frontdoor``: accept, per-address limits, request head, tokens, /healthz, /metrics
- ``http``: the request head, plain answers (/healthz, /metrics), 401s
- ``websocket``: RFC 6455 server side, sans-IO (upgrade answer, frame parser)
- ``session``: one connection's life: HELLO, frame loop, writer, goodbye
- ``connection``: per-connection state, limits and close codes
- ``hello``: HELLO validation
- ``router``: who is online, who may reach whom, channel maps (no I/O)
- ``accounts``: names and hashed tokens in SQLite
- ``metrics``: counters in the Prometheus text format
"""
