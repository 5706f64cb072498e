"""Authentication at the door: who a client is, before any backend sees it.

The driver calls ``find_credentials()`` on the checked upgrade request, then the
configured ``Authenticator`` (None for ``auth.type: none``). Success is an Identity;
failure an AuthFailed with the HTTP status to answer. The token never reaches a
backend: ``Credentials.strip_query`` / ``strip_subprotocol`` say what to remove from
the request that is forwarded, and nothing here logs a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from wsproxy.core.handshake import UpgradeRequest


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
    """The token a request carries, and where it came from."""

    token: str | None
    #: "header", "header:NAME", "query:NAME", "cookie:NAME", "subprotocol" or None.
    source: str | None = None
    #: A query parameter to remove before the request is forwarded.
    strip_query: str | None = None
    #: A Sec-WebSocket-Protocol offer to remove (the whole "bearer.<token>" entry).
    strip_subprotocol: str | None = None


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
        self, request: UpgradeRequest, credentials: Credentials, client_ip: str
    ) -> Identity:
        """Who this is; raises AuthFailed (401 with WWW-Authenticate, 403, 503)."""
        ...

    def reload(self) -> None:
        """Re-read key files (SIGHUP); keep the old keys if the new ones are invalid."""
        ...
