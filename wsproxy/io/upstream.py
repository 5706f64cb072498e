"""The steps from a client's request to a backend's socket, for both drivers.

A WebSocket upgrade (wsproxy.io.connection) and a plain HTTP request
(wsproxy.io.http_relay) reach a backend the same way:

1. ``authenticate()``: find the credentials (``auth.token_from``), have the
   authenticator check them, and take every credential out of the request;
2. ``candidates()``: the backends to try, in order, by the request's hash key, or
   (``balance: cookie``) the backend its sticky cookie names: ``take_sticky()`` takes
   that cookie out of the request first, and the driver adds ``sticky_header()`` to
   the answer (the 101, or the plain response's head);
3. ``dial_backend()`` each in turn. Running out of file descriptors is the proxy's
   own trouble (``OutOfDescriptors``): no backend is blamed and none other is tried,
   the client gets ``OUT_OF_DESCRIPTORS``.

What differs stays in each driver: a WebSocket does its handshake on the new socket
under the same ``limits.backend_timeout``; a plain request may reuse a pooled one.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from wsproxy.auth import Authenticator, AuthFailed, Identity
from wsproxy.auth.sources import find_credentials, strip_credentials
from wsproxy.core.balance import request_key, sticky_header, take_sticky
from wsproxy.core.handshake import RequestHead
from wsproxy.io.dialer import OutOfDescriptors, dial, start_link
from wsproxy.log import get_logger

if TYPE_CHECKING:
    from wsproxy.config import AuthConfig, BackendTLSConfig
    from wsproxy.core.balance import BackendState, Balancer
    from wsproxy.io.links import LinkEngine

__all__ = [
    "NO_BACKEND", "OUT_OF_DESCRIPTORS", "Admitted", "OutOfDescriptors", "authenticate",
    "candidates", "dial_backend", "start_link", "sticky_header", "take_sticky",
]

log = get_logger()

Request = TypeVar("Request", bound=RequestHead)
#: (status, reason, headers) of the proxy's own 503s: try again in a while.
_RETRY_AFTER: Final = (("Retry-After", "5"),)
OUT_OF_DESCRIPTORS: Final = (503, "proxy out of file descriptors", _RETRY_AFTER)
NO_BACKEND: Final = (503, "no healthy backend", _RETRY_AFTER)


@dataclass(frozen=True, slots=True)
class Admitted(Generic[Request]):
    """A request that passed auth: as the backend is to see it, and who sent it."""

    request: Request
    identity: Identity | None
    #: The auth subprotocol offer taken out (an upgrade's 101 may select it).
    auth_subprotocol: str | None


async def authenticate(
    authenticator: Authenticator, auth: AuthConfig, request: Request, *, client_ip: str,
    conn_id: str,
) -> Admitted[Request]:
    """Check the credentials of *request*; every one present is taken out of it.

    Raises:
        AuthFailed: refused (logged here); answer the client with its status.
    """
    credentials = find_credentials(request, auth.token_from, auth.subprotocol_prefix)
    try:
        identity = await authenticator.authenticate(request, credentials, client_ip)
    except AuthFailed as exc:
        log.info("auth.failed", conn_id=conn_id, client=client_ip, reason=exc.reason,
                 source=credentials.source, status=exc.status)
        raise
    # No credential goes further: every configured source present is removed.
    return Admitted(strip_credentials(request, credentials), identity,
                    credentials.strip_subprotocol)


def candidates(
    balancer: Balancer, request: RequestHead | None, hash_key: str | None,
    sticky: Sequence[str] = (),
) -> list[BackendState]:
    """The backends to try for *request*, best first (``balance``); *sticky*: the values
    of its sticky cookie (``take_sticky()``)."""
    key = None if request is None else request_key(request, hash_key)
    return balancer.candidates(key, sticky)


def dial_backend(
    loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.Protocol],
    backend: BackendState, context: ssl.SSLContext | None, backend_tls: BackendTLSConfig,
    engine: LinkEngine | None = None,
) -> Coroutine[Any, Any, asyncio.Transport]:
    """A connection to *backend* with the protocol *factory* makes (TLS if it is wss;
    a link of *engine*, if given, for a ws:// one at a numeric address): dial()'s
    coroutine itself (no coroutine of its own around it: a frame less at each of an
    upgrade's steps).

    Its await raises:
        OutOfDescriptors: the proxy could not open a socket (not the backend's fault).
        OSError: the backend is unreachable (ssl.SSLError is an OSError).
    """
    return dial(loop, factory, backend.config, context,
                backend_tls.server_name or backend.server_name, engine)
