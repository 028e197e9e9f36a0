"""The client's connections to a relay that runs as several nodes (docs/scaling.md).

A load balancer sends each connection to the node that its ``agent=OWNER/NAME``
URL parameter hashes to, and an agent connects with its own name the same
way, so a client reaches an agent through a connection opened for it. This
module opens those connections as they are needed, one per node: the relay's
listing says which node each agent is on, and an agent on a node we already
have a connection to is reached over it.

A single relay (no ``node`` in its WELCOME) needs none of this: every agent is
reached over the first connection.

An agent may not be on the node its name hashes to (it connected while that
node was down, and the node came back, or a node was added), so a new link
asks the load balancer for the listed node by name (``node=ID``).
"""

from __future__ import annotations

import functools
from typing import Any

import trio

from pio_remote.net import link
from pio_remote.net.link import Link, RelayError


class NodeLinks:
    """Links to relay nodes, by node id; they live in ``nursery``."""

    def __init__(self, main: Link, relay: str, token: str, nursery: trio.Nursery) -> None:
        self.main = main
        self.relay = relay
        self.token = token
        self.nursery = nursery
        self.by_node: dict[str, Link] = {}
        self._lock = trio.Lock()
        if main.node is not None:
            self.by_node[main.node] = main

    @property
    def clustered(self) -> bool:
        return self.main.node is not None

    async def locate(self, ref: str) -> tuple[str, str | None]:
        """``OWNER/NAME`` for ``ref`` (a bare name as the relay resolves it), and the
        node the relay lists it on (None: not listed, i.e. offline or not shared)."""
        listed = await self.main.list_agents()
        nodes = {item.get("agent"): item.get("node") for item in listed}
        if "/" not in ref:
            own = f"{self.main.account}/{ref}"
            shared = [item["agent"] for item in listed if item.get("name") == ref]
            ref = own if own in nodes or len(shared) != 1 else shared[0]
        return ref, nodes.get(ref)

    async def link_for(self, ref: str, node: str | None) -> Link:
        """A link to the node that has agent ``ref`` (listed on ``node``), opened if needed."""
        if not self.clustered:
            return self.main
        async with self._lock:  # concurrent fan-out: one new link at a time
            if node is not None and (known := self._alive(node)) is not None:
                return known
            # ?node= asks the load balancer for that node by name: usually where the
            # name hashes anyway, but not for an agent that connected while its node
            # was down. An agent not listed goes by the hash; the relay says why not.
            params = {"agent": ref} if node is None else {"agent": ref, "node": node}
            return await self._connect(params)

    def _alive(self, node: str) -> Link | None:
        lnk = self.by_node.get(node)
        return lnk if lnk is not None and lnk.error is None else None

    async def _connect(self, params: dict[str, str]) -> Link:
        """A new link; if it reached a node we already have a link to, that one instead."""
        lnk, scope = await self.nursery.start(self._run_link, params)
        existing = self._alive(lnk.node or "")
        if existing is not None:
            scope.cancel()
            return existing
        self.by_node[lnk.node or ""] = lnk
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
