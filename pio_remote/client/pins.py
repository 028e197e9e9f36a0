"""The agent keys this client pinned when it paired (``known_agents.json``).

A client talks only to the key it pinned for an agent; the agent's half, who may
use it, is agent/allowlist.py.
"""

from __future__ import annotations

from pathlib import Path

from pio_remote.home import HEX_KEY, ConfigError, locked, read_json, write_json

KNOWN_AGENTS_FILE = "known_agents.json"


def _known_agents(home: Path) -> dict[str, str]:
    path = home / KNOWN_AGENTS_FILE
    data = read_json(path, {})
    fix = "fix or remove it (then pair again with 'pio-remote agent pair <invite>')"
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object {{agent: key}}: {fix}")
    for agent_id, value in data.items():
        if not isinstance(value, str) or not HEX_KEY.match(value):
            raise ConfigError(
                f"{path}: the key pinned for agent {agent_id!r} is not 64 hex digits: {fix}"
            )
    return data


def pinned_key(home: Path, agent_id: str) -> bytes | None:
    value = _known_agents(home).get(agent_id)
    return bytes.fromhex(value) if value else None


def pinned_agents(home: Path) -> dict[str, bytes]:
    """Every pinned agent id and its key."""
    return {agent_id: bytes.fromhex(key) for agent_id, key in _known_agents(home).items()}


def pin_agent(home: Path, agent_id: str, key: bytes) -> None:
    with locked(home):
        known = _known_agents(home)
        known[agent_id] = key.hex()
        write_json(home / KNOWN_AGENTS_FILE, known)


def forget_agent(home: Path, agent_id: str) -> bool:
    with locked(home):
        known = _known_agents(home)
        if known.pop(agent_id, None) is None:
            return False
        write_json(home / KNOWN_AGENTS_FILE, known)
    return True
