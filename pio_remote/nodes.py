"""The client's connections to a relay that runs as several nodes (docs/scaling.md).

A load balancer sends each connection to the node that its ``agent=OWNER/NAME``
URL parameter hashes to, and an agent connects with its own name the same
way, so a client reaches an agent through a connection opened for it. This
module opens those connections as they are needed, one per node: a second
agent that lives on a node we already have a connection to reuses it.

A single relay (no ``node`` in its WELCOME) needs none of this: every agent is
reached over the first connection.

If an agent is not on the node its name hashes to (it connected while that
node was down, and the node came back), the relay's listing names the node it
is on, and we ask the load balancer for that node by name (``node=ID``).
"""

from __future__ import annotations

import functools
from typing import Any

import trio

from pio_remote import link
from pio_remote.link import Link, RelayError


class NodeLinks:
    """Links to relay nodes, by node id; they live in ``nursery``."""

    def __init__(self, main: Link, relay: str, token: str, nursery: trio.Nursery) -> None:
        self.main = main
        self.relay = relay
        self.token = token
        self.nursery = nursery
        self.by_node: dict[str, Link] = {}
        self.by_agent: dict[str, Link] = {}
        self._lock = trio.Lock()
        if main.node is not None:
            self.by_node[main.node] = main

    @property
    def clustered(self) -> bool:
        return self.main.node is not None

    async def qualify(self, ref: str) -> str:
        """``OWNER/NAME`` for a bare agent name, as the relay's listing resolves it."""
        if "/" in ref:
            return ref
        listed = await self.main.list_agents()
        own = f"{self.main.account}/{ref}"
        if any(item.get("agent") == own for item in listed):
            return own
        shared = [item["agent"] for item in listed if item.get("name") == ref]
        return shared[0] if len(shared) == 1 else own

    async def node_of(self, ref: str) -> str | None:
        """The node the relay lists ``ref`` on, if it is online."""
        for item in await self.main.list_agents():
            if item.get("agent") == ref:
                return item.get("node")
        return None

    async def link_for(self, ref: str, node: str | None = None) -> Link:
        """The link that reaches agent ``ref`` (``OWNER/NAME``), opened if needed."""
        if not self.clustered:
            return self.main
        async with self._lock:  # concurrent fan-out: one new link at a time
            if node is None:
                known = self.by_agent.get(ref)
                if known is not None and known.error is None:
                    return known
            elif (known := self.by_node.get(node)) is not None and known.error is None:
                self.by_agent[ref] = known
                return known
            params = {"agent": ref} if node is None else {"agent": ref, "node": node}
            lnk, scope = await self.nursery.start(self._run_link, params)
            existing = self.by_node.get(lnk.node or "")
            if existing is not None and existing.error is None:
                scope.cancel()  # a node we already reach: keep one link per node
                lnk = existing
            else:
                self.by_node[lnk.node or ""] = lnk
            self.by_agent[ref] = lnk
            return lnk

    async def _run_link(
        self, params: dict[str, str], task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """One extra link, alive until the client closes or the relay drops it."""
        started = False
        with trio.CancelScope() as scope:
            try:
                connect = functools.partial(link.connect, self.relay, self.token)
                async with connect({"role": "client"}, params) as lnk:
                    task_status.started((lnk, scope))
                    started = True
                    await trio.sleep_forever()
            except RelayError:
                if not started:
                    raise
                # Sessions on it see their channels close; the next lookup reconnects.
