"""Live connections and the connection limits, as pure bookkeeping."""

from __future__ import annotations

from collections import Counter
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Every accepted connection by id, and the admitted ones counted per client.

    The limits count *admitted* upgrades (``admit()``, when the request has been
    read), under the client's address as the proxy believes it (X-Forwarded-For from
    a trusted proxy, a PROXY header). Counting from the TCP accept instead refused a
    whole burst of simultaneous upgrades, none of the ones that fit included, and
    counted clients behind a load balancer under the balancer's address. Half-open
    handshakes are bounded by ``limits.handshake_timeout`` instead.
    """

    def __init__(self, *, max_connections: int, max_per_ip: int) -> None:
        self.max_connections = max_connections
        #: 0: no limit.
        self.max_per_ip = max_per_ip
        self.connections: dict[str, T] = {}
        self._admitted: dict[str, str] = {}  # conn id -> client address
        self._per_ip: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.connections)

    def add(self, conn_id: str, conn: T) -> None:
        self.connections[conn_id] = conn

    def admit(self, conn_id: str, ip: str) -> str | None:
        """Count *conn_id* in, or say why it would be one too many (then it is not)."""
        if len(self._admitted) >= self.max_connections:
            return "too many connections"
        if self.max_per_ip and self._per_ip[ip] >= self.max_per_ip:
            return "too many connections from this address"
        self._admitted[conn_id] = ip
        self._per_ip[ip] += 1
        return None

    def remove(self, conn_id: str) -> None:
        self.connections.pop(conn_id, None)
        ip = self._admitted.pop(conn_id, None)
        if ip is not None:
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]
