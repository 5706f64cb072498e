"""Live connections and the connection limits, as pure bookkeeping."""

from __future__ import annotations

from collections import Counter
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Every accepted connection, by id, with counts per client address.

    Connections are counted from the TCP accept, so that a flood of half-open
    handshakes counts against the limits too.
    """

    def __init__(self, *, max_connections: int, max_per_ip: int) -> None:
        self.max_connections = max_connections
        #: 0: no limit.
        self.max_per_ip = max_per_ip
        self.connections: dict[str, T] = {}
        self._per_ip: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.connections)

    def add(self, conn_id: str, ip: str, conn: T) -> None:
        self.connections[conn_id] = conn
        self._per_ip[ip] += 1

    def remove(self, conn_id: str, ip: str) -> None:
        if self.connections.pop(conn_id, None) is None:
            return
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]

    def over_limit(self, ip: str) -> str | None:
        """Why a connection from *ip* (already added) is one too many, or None."""
        if len(self.connections) > self.max_connections:
            return "too many connections"
        if self.max_per_ip and self._per_ip[ip] > self.max_per_ip:
            return "too many connections from this address"
        return None
