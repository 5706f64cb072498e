"""Choosing a backend, as a pure function of the backends' states.

``candidates()`` returns every usable backend in order of preference, so that the
driver can try the next one when a backend cannot be reached (SPEC.md: "If a backend
cannot be reached, the next healthy one is tried before answering").
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from wsproxy.config import BackendConfig
from wsproxy.core.handshake import RequestHead


@dataclass(slots=True, eq=False)
class BackendState:
    """A backend and what the proxy knows of it right now."""

    config: BackendConfig
    #: Open proxied connections to this backend.
    active: int = 0
    healthy: bool = True
    draining: bool = False
    #: Closed a connection with 1001/1012: restarting, out of rotation for a while.
    held: bool = False
    #: Gone from the config; kept only while its connections drain.
    removed: bool = False
    #: "static" (the config's backends) or "dns" (discovery.dns).
    source: str = "static"
    #: For a discovered wss:// backend: the DNS name its certificate must carry.
    server_name: str | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def usable(self) -> bool:
        return self.healthy and not (self.draining or self.held or self.removed)


class Balancer:
    """round_robin | least_connections | hash (rendezvous hashing on a request key)."""

    def __init__(self, policy: str, backends: Iterable[BackendState]) -> None:
        if policy not in ("round_robin", "least_connections", "hash"):
            raise ValueError(f"unknown balance policy {policy!r}")
        self.policy = policy
        self.backends: dict[str, BackendState] = {b.name: b for b in backends}
        self._turn = 0

    def candidates(self, key: str | None = None) -> list[BackendState]:
        """Usable backends, best first. *key* is the hash policy's request value."""
        usable = [b for b in self.backends.values() if b.usable]
        if not usable:
            return []
        if self.policy == "hash" and key is not None:
            # Rendezvous hashing: a key keeps its backend while others come and go.
            return sorted(usable, key=lambda b: _score(key, b.name), reverse=True)
        self._turn += 1
        start = self._turn % len(usable)
        rotated = usable[start:] + usable[:start]
        if self.policy == "round_robin":
            return rotated
        # least_connections; the rotation spreads ties instead of piling on the first.
        return sorted(rotated, key=lambda b: b.active)


def _score(key: str, name: str) -> int:
    digest = hashlib.blake2b(f"{name}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def request_key(request: RequestHead, name: str | None) -> str | None:
    """The hash policy's value for *request*: header *name*, else query parameter *name*."""
    if name is None:
        return None
    value = request.header(name.lower().encode("latin-1"))
    if value is not None:
        return value.decode("latin-1")
    query = urlsplit(request.target.decode("latin-1")).query
    return dict(parse_qsl(query)).get(name)
