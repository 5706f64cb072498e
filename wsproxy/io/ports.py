"""What the drivers ask of the process they serve: small ``typing.Protocol`` ports.

A driver never imports the process wiring (wsproxy.supervisor) nor the control plane:
it is handed an owner that has the members listed here, as io.http_pool's
``BackendLink`` is handed a ``LinkUser`` and io.tls_accept's listener a
``HandshakeOwner``. supervisor.ProxyContext implements every port; a test may hand a
driver anything else that does.

The members keep the names the drivers have always called (``ctx.config``,
``ctx.refusal(conn)``...). Values a driver reads per connection (``config``, ``loop``,
``balancer``...) are plain attributes of the implementation, so that a port costs the
data path nothing.

This module imports only core/, config, auth and io.http_pool: never the drivers
themselves, which import it (``ConnectionOwner`` names the connection type as a type
parameter instead).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

if TYPE_CHECKING:
    from wsproxy.auth import Authenticator, Identity
    from wsproxy.config import ProxyConfig
    from wsproxy.core.balance import BackendState, Balancer
    from wsproxy.core.handshake import Forwarding
    from wsproxy.core.liveness import LivenessRules
    from wsproxy.core.registry import Registry
    from wsproxy.core.states import Side
    from wsproxy.io.http_pool import BackendPool

#: (failure label, status, reason, headers) of an upgrade refused before any backend.
Refusal = tuple[str, int, str, tuple[tuple[str, str], ...]]
#: The failure label of an upgrade refused because the proxy is draining: the session
#: ends by Trigger.SHUTDOWN.
DRAINING: Final = "draining"

#: The WebSocket connection class of io.connection, as its owner's hooks receive it.
ConnT = TypeVar("ConnT")


class Relay(Protocol):
    """What the plain HTTP side (and a proxy drain) does to one relay (io.http_relay)."""

    @property
    def busy(self) -> bool:
        """Whether a request is in flight."""

    def close_when_idle(self) -> None:
        """Close the client connection after the request in flight, if any."""

    def terminate(self) -> None:
        """Close the client connection now."""


class PlainRequests(Protocol):
    """The proxy's plain HTTP side as a relay sees it (io.plain_http.PlainHttp)."""

    @property
    def pool(self) -> BackendPool: ...

    def add(self, relay: Relay) -> None: ...

    def remove(self, relay: Relay) -> None: ...

    def refusing(self) -> bool:
        """Whether a new request is answered 503 (a proxy drain's decision)."""


class RequestMetrics(Protocol):
    """Where a relay counts its requests (admin.metrics.Metrics)."""

    def http_request(self, status: int | None, seconds: float) -> None: ...


class PlainHttpOwner(Protocol):
    """What the plain HTTP side (io.plain_http.PlainHttp) asks of the process."""

    def refusing_requests(self) -> bool:
        """Whether a new plain request is answered 503 (control.drains decides)."""

    def relay_ended(self) -> None:
        """A plain HTTP client connection has ended (for the metrics)."""


class HttpRelayOwner(Protocol):
    """What a plain HTTP relay (io.http_relay.HttpRelay) asks of the process."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def config(self) -> ProxyConfig:
        """The current config (replaced whole on reload)."""

    @property
    def authenticator(self) -> Authenticator | None: ...

    @property
    def balancer(self) -> Balancer: ...

    @property
    def backend_ssl(self) -> ssl.SSLContext | None: ...

    @property
    def owned_headers(self) -> frozenset[bytes]:
        """Lower-case names of the headers the proxy sets itself (auth identity)."""

    @property
    def http(self) -> PlainRequests: ...

    @property
    def metrics(self) -> RequestMetrics: ...

    @property
    def ready(self) -> bool:
        """Whether new connections are welcome (no proxy drain)."""

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run *fn* (a dial, an auth check) as a task the process keeps and cancels."""

    def forwarding(
        self, client_ip: str, forwarded_for: str, request_id: str, identity: Identity | None
    ) -> Forwarding:
        """What a backend is told about the client (X-Forwarded-*, identity headers)."""

    def probe_answer(self, path: str) -> tuple[int, str]:
        """The (status, text) of a probe (``/healthz``, ``/readyz``) on the main listener."""



class ConnectionOwner(HttpRelayOwner, Protocol[ConnT]):
    """What a WebSocket connection (io.connection.Connection, the *ConnT*) asks of the
    process; a connection that turns out to carry plain HTTP hands it to its relay."""

    @property
    def registry(self) -> Registry[ConnT]: ...

    @property
    def liveness_rules(self) -> LivenessRules: ...

    def new_conn_id(self) -> str: ...

    def close_reason(self, text: str) -> str:
        """*text* as a close reason, with the reconnect hint when that is on."""

    def hold_down(self, backend: BackendState) -> None:
        """*backend* announced a restart (1001/1012): no new upgrades for a while."""

    def ping_rtt(self, side: Side, rtt: float) -> None:
        """A heartbeat round trip on *side* took *rtt* seconds."""

    def refusal(self, conn: ConnT) -> Refusal | None:
        """Why this upgrade is answered with an error before any backend is asked."""

    def connection_started(self, conn: ConnT) -> None: ...

    def connection_opened(self, conn: ConnT) -> None: ...

    def connection_rejected(self, conn: ConnT) -> None: ...

    def connection_finished(self, conn: ConnT) -> None: ...
