"""mDNS/DNS-SD browsing with zeroconf, for the ``device.mdns`` call (mdns.py).

Its own module so that an agent without zeroconf (the linux-armv6 single file, for
which PyPI has no zeroconf wheel) still starts: mdns.py imports it on the first call.
zeroconf's API is blocking, so ``browse`` runs in a worker thread.

``PIO_REMOTE_MDNS_INTERFACES`` (comma-separated addresses) limits which
interfaces the agent browses on, e.g. ``127.0.0.1`` in tests.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from zeroconf import InterfaceChoice, ServiceBrowser, ServiceListener, Zeroconf

ENV_INTERFACES = "PIO_REMOTE_MDNS_INTERFACES"
# Long enough for devices to answer a query (RFC 6762 lets responders wait up to
# 500 ms), short enough for an interactive listing; PlatformIO waits a few seconds.
DEFAULT_TIMEOUT = 3.0
# DNS-SD's meta-query (RFC 6763, section 9): every responder lists its service types.
SERVICE_TYPES = "_services._dns-sd._udp.local."


def interfaces() -> list[str] | InterfaceChoice:
    raw = os.environ.get(ENV_INTERFACES, "").strip()
    return [a.strip() for a in raw.split(",") if a.strip()] if raw else InterfaceChoice.All


class _Collector(ServiceListener):
    """Follows the type enumeration and browses each new type as it shows up."""

    def __init__(self, zc: Zeroconf) -> None:
        self.zc = zc
        self.found: set[tuple[str, str]] = set()
        self.browsers: dict[str, ServiceBrowser] = {}
        self.lock = threading.Lock()

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        with self.lock:
            if type_ == SERVICE_TYPES:
                if name not in self.browsers:
                    self.browsers[name] = ServiceBrowser(self.zc, name, self)
            else:
                self.found.add((type_, name))

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.add_service(zc, type_, name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        with self.lock:
            self.found.discard((type_, name))


def _decode(value: bytes | None) -> str | None:
    return None if value is None else value.decode(errors="replace")


def browse(timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
    """Every service announced on the chosen interfaces, in PlatformIO's JSON shape.

    ``[{"type", "name", "ip", "port", "properties"}]``, sorted by type and name.
    """
    zc = Zeroconf(interfaces=interfaces())
    collector = _Collector(zc)
    types = ServiceBrowser(zc, SERVICE_TYPES, collector)
    try:
        time.sleep(timeout)
        types.cancel()
        with collector.lock:
            for b in collector.browsers.values():
                b.cancel()
            found = sorted(collector.found)
        items = []
        for type_, name in found:
            info = zc.get_service_info(type_, name, timeout=int(timeout * 1000))
            if info is None:
                continue
            items.append(
                {
                    "type": type_,
                    "name": name,
                    "ip": ", ".join(info.parsed_addresses()),
                    "port": info.port,
                    "properties": {
                        _decode(k): _decode(v) for k, v in (info.properties or {}).items()
                    },
                }
            )
        return items
    finally:
        zc.close()
