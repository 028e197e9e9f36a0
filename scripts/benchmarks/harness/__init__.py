"""Shared setup for `scripts/bench`, one module per job.

Every benchmark compares against a baseline measured in the same run on the same
machine, so a ratio still means something on a busy or slow machine.

- ``rig``: a relay, an account and agents as real processes (``World``, ``world()``),
  with a client home shared with the agents so no pairing is needed.
- ``openssh``: a private OpenSSH server on a free 127.0.0.1 port (``sshd()``), or
  ``None`` when this machine cannot run one.
- ``rawtcp``: the fallback baseline, raw TCP through one forwarding hop.
- ``cpumeter``: CPU seconds each process spent in a block, which moves far less
  with other people's load than wall-clock figures do.
- ``stats``: percentiles, ``Row``, ``Target``, ``print_table()`` and ``write_json()``:
  one way to compute, show and keep results.
- ``echoloop``: the control loop of the echo drivers (relay-load, scale).

Everything here is bounded in time, talks to 127.0.0.1 only, and is cleaned
up in ``finally`` blocks, even when a benchmark fails half-way.
"""
