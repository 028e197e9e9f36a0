"""Which agents a command runs on, and how it names them to the user."""

from __future__ import annotations

from pio_remote.client.api import Client


async def resolve_targets(client: Client, agents: list[str]) -> list[str]:
    """The -a agents, or every reachable online agent."""
    if agents:
        return agents
    return [a.agent for a in await client.list_agents()]


def display_name(client: Client, agent_id: str) -> str:
    """An agent of this account by its name alone; another account's as OWNER/NAME."""
    owner, _, name = agent_id.partition("/")
    return name if owner == client.account and name else agent_id
