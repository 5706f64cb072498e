"""Choosing a backend, as a pure function of the backends' states.

``candidates()`` returns every usable backend in order of preference, so that the
driver can try the next one when a backend cannot be reached (SPEC.md: "If a backend
cannot be reached, the next healthy one is tried before answering").

Sticky sessions (``balance: cookie``): a cookie names the backend a session is on by
``sticky_value()``, a digest of the backend's name. The name, not the URL: names are
unique in a config (two backends may share a URL), the replicas of a gateway share the
config, and a discovered backend is named by its address:port, so every wsproxy in front
of a backend computes the same value, and none spells the address. ``take_sticky()``
reads the cookie and takes it out of the request (the backend never sees it);
``candidates()`` puts the backend it names first while that backend is usable (an
unknown, stale or unusable one is ignored); ``sticky_header()`` is the Set-Cookie to
add to the answer when the backend that answered is not the one the cookie named.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar
from urllib.parse import parse_qsl, urlsplit

from wsproxy.config import BackendConfig, StickyCookieConfig
from wsproxy.core.handshake import Header, RequestHead

Request = TypeVar("Request", bound=RequestHead)
#: Hex digits of SHA-256 in a sticky cookie's value: 64 bits, no collision among backends.
STICKY_DIGITS: Final = 16


@dataclass(slots=True, eq=False)
class BackendState:
    """A backend and what the proxy knows of it right now."""

    config: BackendConfig
    #: Open proxied connections to this backend.
    active: int = 0
    #: Upgrades being dialled to it, not yet answered: counted by least_connections, or
    #: a burst of upgrades (a reconnect wave) would all pick the same emptiest backend.
    dialing: int = 0
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
    #: ``config.name`` and ``config.authority`` (the Host of its handshakes), read once:
    #: a state's config never changes (a changed backend is a new state), and every
    #: upgrade reads them (a property each, the authority's f-string: ~3.5k instructions).
    name: str = field(init=False, repr=False)
    authority: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.name = self.config.name
        self.authority = self.config.authority

    @property
    def usable(self) -> bool:
        return self.healthy and not (self.draining or self.held or self.removed)


class Balancer:
    """round_robin | least_connections | hash (rendezvous hashing on a request key) |
    cookie (the backend a sticky cookie names, else least connections)."""

    def __init__(self, policy: str, backends: Iterable[BackendState]) -> None:
        if policy not in ("round_robin", "least_connections", "hash", "cookie"):
            raise ValueError(f"unknown balance policy {policy!r}")
        self.policy = policy
        self.backends: dict[str, BackendState] = {b.name: b for b in backends}
        self._turn = 0
        #: Set while a rebalancing round runs (control.rebalance): every pick is the
        #: least-loaded backend's, whatever the policy (a hash or a sticky cookie would
        #: send a moved client straight back to the backend it was moved off).
        self.least_loaded = False

    def candidates(
        self, key: str | None = None, sticky: Sequence[str] = ()
    ) -> list[BackendState]:
        """Usable backends, best first. *key* is the hash policy's request value;
        *sticky* the cookie policy's cookie values (``take_sticky()``)."""
        backends = self.backends
        policy = "least_connections" if self.least_loaded else self.policy
        if len(backends) == 1:
            # One backend (the usual sidecar): every policy's answer is it, if usable;
            # the turn moves as below, so that a second backend added later starts
            # from where the rotation would have been.
            for only in backends.values():
                if not only.usable:
                    return []
                if policy != "hash" or key is None:
                    self._turn += 1
                return [only]
        usable = [b for b in backends.values() if b.usable]
        if not usable:
            return []
        if policy == "hash" and key is not None:
            # Rendezvous hashing: a key keeps its backend while others come and go.
            return sorted(usable, key=lambda b: _score(key, b.name), reverse=True)
        self._turn += 1
        start = self._turn % len(usable)
        rotated = usable[start:] + usable[:start]
        if policy == "round_robin":
            return rotated
        # least_connections; the rotation spreads ties instead of piling on the first.
        ordered = sorted(rotated, key=lambda b: b.active + b.dialing)
        if policy == "cookie" and sticky:
            # The first value that names a usable backend wins; others are stale.
            for value in sticky:
                for i, backend in enumerate(ordered):
                    if sticky_value(backend.name) == value:
                        ordered.insert(0, ordered.pop(i))
                        return ordered
        return ordered


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


# Sticky sessions (balance: cookie)…


@functools.lru_cache(maxsize=4096)
def sticky_value(name: str) -> str:
    """The cookie value that names backend *name*: the same in every wsproxy, opaque."""
    digest = hashlib.sha256(b"wsproxy-backend\0" + name.encode("utf-8")).hexdigest()
    return digest[:STICKY_DIGITS]


def take_sticky(request: Request, name: str) -> tuple[Request, tuple[str, ...]]:
    """The values of cookie *name* in *request*, in order, and *request* without them.

    Every other cookie goes on byte for byte; a Cookie header left empty is dropped.
    """
    raw = name.encode("latin-1")
    values: list[str] = []
    headers: list[Header] = []
    for key, value in request.headers:
        if key != b"cookie" or raw not in value:
            headers.append((key, value))
            continue
        kept: list[bytes] = []
        for pair in value.split(b";"):
            cookie, eq, cookie_value = pair.partition(b"=")
            if eq and cookie.strip() == raw:
                text = cookie_value.strip()
                if len(text) >= 2 and text[:1] == text[-1:] == b'"':  # RFC 6265 §4.1.1
                    text = text[1:-1]
                values.append(text.decode("latin-1"))
            elif pair.strip():
                kept.append(pair)
        rest = b";".join(kept).strip()
        if rest:
            headers.append((key, rest))
    if not values:
        return request, ()
    return dataclasses.replace(request, headers=tuple(headers)), tuple(values)


def sticky_header(
    config: StickyCookieConfig, backend: str, sticky: Sequence[str], *, https: bool
) -> tuple[Header, ...]:
    """The Set-Cookie for an answer from *backend* to a request that carried *sticky*:
    none when the cookie named that backend already."""
    value = sticky_value(backend)
    if value in sticky:
        return ()
    parts = [f"{config.name}={value}", f"Path={config.path}", "HttpOnly",
             f"SameSite={config.samesite.capitalize()}"]
    if config.secure or (config.secure is None and https):
        parts.append("Secure")
    return ((b"Set-Cookie", "; ".join(parts).encode("latin-1")),)
