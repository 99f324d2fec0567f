"""Client addresses: who a connection comes from, and what each address holds against its limit.

A service behind the gateway sees every connection come from the gateway's
address; the gateway (nginx rendered from kong.yml, or Kong) names the client in
``X-Real-IP``. That header is believed only from ``settings.trusted_proxies``
(loopback by default: the embedded gateway), so a client elsewhere cannot pass
itself off as another. Counting per address as well as in total keeps one
address from taking what every other client needs: watcher and sender
connections (:func:`labkit.services.serving.limit_connections`) and the
consumer's read-back slots for resuming watchers.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter
from collections.abc import Iterable

from websockets.asyncio.server import ServerConnection

__all__ = ["client_address", "Tally"]


@functools.lru_cache(maxsize=8)
def _networks(trusted: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(item, strict=False) for item in trusted]


def client_address(ws: ServerConnection, trusted: Iterable[str]) -> str:
    """The client's address: ``X-Real-IP`` when the peer is a trusted proxy and sets it, else the peer's."""
    peer = str(ws.remote_address[0]) if ws.remote_address else ""
    request = ws.request
    forwarded = request.headers.get("X-Real-IP", "").strip() if request is not None else ""
    if not forwarded:
        return peer
    try:
        peer_ip, forwarded_ip = ipaddress.ip_address(peer), ipaddress.ip_address(forwarded)
    except ValueError:
        return peer
    return str(forwarded_ip) if any(peer_ip in network for network in _networks(tuple(trusted))) else peer


class Tally:
    """Things held at once, at most ``total`` in all and ``per_address`` for any one address."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = min(per_address, total)
        self.held: Counter[str] = Counter()
        self.count = 0

    def refusal(self, address: str) -> str | None:
        """Why one more for ``address`` is refused (the limit that is full), or None when it fits."""
        if self.count >= self.total:
            return f"limit {self.total}"
        if self.held[address] >= self.per_address:
            return f"limit {self.per_address} from your address"
        return None

    def take(self, address: str) -> None:
        self.count += 1
        self.held[address] += 1

    def give_back(self, address: str) -> None:
        self.count -= 1
        self.held[address] -= 1
        if not self.held[address]:
            del self.held[address]
