"""Authentication at the door: who a client is, before any backend sees it.

The driver calls ``find_credentials()`` on the checked upgrade request, then the
configured ``Authenticator`` (None for ``auth.type: none``). Success is an Identity;
failure an AuthFailed with the HTTP status to answer. No token reaches a backend:
``Credentials.present`` / ``auth_offers`` name every credential the request holds, the
one checked or not, and ``strip_credentials()`` removes them all from the request that
is forwarded. Nothing here logs a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from wsproxy.core.handshake import RequestHead


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated client."""

    subject: str
    #: Extra headers for the backend: JWT claims_to_headers, forward auth copy_headers.
    headers: tuple[tuple[str, str], ...] = ()
    #: When the credentials stop being valid (Unix time, leeway included), if ever.
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class Credentials:
    """The token a request carries, where it came from, and every credential it holds."""

    token: str | None
    #: "header", "header:NAME", "query:NAME", "cookie:NAME", "subprotocol" or None.
    source: str | None = None
    #: Every configured source the request holds, in ``token_from`` order: the one that
    #: won or not, valid or not. All of them are removed before the request is forwarded.
    present: tuple[str, ...] = ()
    #: Every Sec-WebSocket-Protocol offer "<prefix><token>" (whole entries), in the
    #: client's order: removed from what the backend is offered.
    auth_offers: tuple[str, ...] = ()

    @property
    def strip_subprotocol(self) -> str | None:
        """The auth offer a 101 selects when the backend selects none (the first one):
        browsers fail a handshake whose offer gets no answer."""
        return self.auth_offers[0] if self.auth_offers else None


class AuthFailed(Exception):
    """The upgrade is refused: ``status`` to answer, ``reason`` a metrics label."""

    def __init__(
        self, status: int, reason: str, message: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers
        super().__init__(f"{status} {reason}: {message}")


class Authenticator(Protocol):
    """One configured auth type (api_key, jwt, forward)."""

    #: Header names this authenticator sets for the backend (client copies dropped).
    owned_headers: frozenset[str]

    async def authenticate(
        self, request: RequestHead, credentials: Credentials, client_ip: str
    ) -> Identity:
        """Who this is; raises AuthFailed (401 with WWW-Authenticate, 403, 503)."""
        ...

    def reload(self) -> None:
        """Re-read key files (SIGHUP); keep the old keys if the new ones are invalid."""
        ...
