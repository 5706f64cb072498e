"""The admin API's routes: JSON over HTTP/1.1, served by admin.server.

The routes are SPEC.md's; the work is done by the proxy's controls, reached through
``AdminHost``. Errors are JSON with a status, never a traceback.
"""

from __future__ import annotations

import hmac
import importlib.resources
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import parse_qs, urlsplit

import anyio

from wsproxy.control.rebalance import RebalanceRefused
from wsproxy.core import closes
from wsproxy.core.states import Side
from wsproxy.units import parse_duration

if TYPE_CHECKING:
    from wsproxy.admin.metrics import Metrics
    from wsproxy.config import ProxyConfig
    from wsproxy.control.drain import Drain
    from wsproxy.core.balance import BackendState, Balancer
    from wsproxy.core.registry import Registry
    from wsproxy.io.connection import Connection

#: GET /drain?wait= never blocks longer than this.
MAX_WAIT: Final = 600.0
_PUBLIC: Final = frozenset({"/", "/healthz", "/readyz"})
JSON: Final = "application/json"


class HTTPError(Exception):
    """An answer other than 200, with a JSON ``{"error": message}`` body."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        self.status = status
        self.message = message
        self.headers = headers
        super().__init__(message)


class Request:
    """What a handler sees of one request."""

    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        url = urlsplit(target)
        self.path = url.path
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.headers = headers
        self.body = body

    def json(self) -> dict[str, Any]:
        if not self.body:
            return {}
        try:
            value = json.loads(self.body)
        except ValueError:
            raise HTTPError(400, "body is not JSON") from None
        if not isinstance(value, dict):
            raise HTTPError(400, "body must be a JSON object")
        return value


#: (status, content type, body, extra headers)
Response = tuple[int, str, bytes, tuple[tuple[str, str], ...]]


def _by_age(conn: Connection) -> float:
    return conn.age()


def _by_traffic(conn: Connection) -> int:
    return conn.session.bytes_relayed(Side.CLIENT) + conn.session.bytes_relayed(Side.UPSTREAM)


def _json(value: object, status: int = 200) -> Response:
    return status, JSON, json.dumps(value).encode() + b"\n", ()


class AdminHost(Protocol):
    """What the admin API asks of the proxy it serves (the wiring, ProxyContext)."""

    @property
    def config(self) -> ProxyConfig: ...

    @property
    def registry(self) -> Registry[Connection]: ...

    @property
    def balancer(self) -> Balancer: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def ready(self) -> bool: ...

    @property
    def drains(self) -> Mapping[BackendState | None, Drain]:
        """Every drain in progress; the key None is the proxy's own."""

    def backends_shown(self) -> list[BackendState]: ...

    def drain(self, spread: float | None = None) -> Drain: ...

    def undrain(self) -> bool: ...

    def drain_backend(self, backend: BackendState, spread: float | None = None) -> Drain: ...

    def undrain_backend(self, backend: BackendState) -> bool: ...

    def drain_status(self) -> dict[str, object]: ...

    def reload(self) -> list[str]:
        """Re-read the config file; the errors, if it was refused."""

    def rebalance(self) -> dict[str, object]:
        """Start a rebalancing round now; its status (RebalanceRefused: a drain runs)."""

    def rebalance_status(self) -> dict[str, object]: ...

    def backend_warm(self, backend: BackendState) -> bool:
        """Whether *backend* takes part in rebalancing (in rotation, warmed up)."""


class AdminAPI:
    """The routes, bound to one proxy."""

    def __init__(self, ctx: AdminHost) -> None:
        self.ctx = ctx

    # Dispatch…

    async def handle(self, request: Request) -> Response:
        try:
            handler, args = self._route(request)
            self._authorize(request)
            return await handler(request, *args)
        except HTTPError as exc:
            body = json.dumps({"error": exc.message}).encode() + b"\n"
            return exc.status, JSON, body, exc.headers

    def _route(self, request: Request) -> tuple[Callable[..., Awaitable[Response]], list[str]]:
        parts = [p for p in request.path.split("/") if p]
        routes: dict[tuple[str, ...], dict[str, Callable[..., Awaitable[Response]]]] = {
            (): {"GET": self.page},
            ("healthz",): {"GET": self.healthz},
            ("readyz",): {"GET": self.readyz},
            ("metrics",): {"GET": self.metrics},
            ("backends",): {"GET": self.backends},
            ("connections",): {"GET": self.connections},
            ("connections", "close"): {"POST": self.close_connections},
            ("drain",): {"GET": self.drain_status, "POST": self.drain},
            ("undrain",): {"POST": self.undrain},
            ("reload",): {"POST": self.reload},
            ("rebalance",): {"GET": self.rebalance_status, "POST": self.rebalance},
        }
        args: list[str] = []
        key = tuple(parts)
        if len(parts) == 3 and parts[0] == "backends" and parts[2] in ("drain", "undrain"):
            key, args = ("backends", "*", parts[2]), [parts[1]]
            routes[key] = {"POST": self.backend_drain if parts[2] == "drain"
                           else self.backend_undrain}
        elif len(parts) == 2 and parts[0] == "connections" and parts[1] != "close":
            key, args = ("connections", "*"), [parts[1]]
            routes[key] = {"DELETE": self.delete_connection}
        methods = routes.get(key)
        if methods is None:
            raise HTTPError(404, f"no such endpoint: {request.path}")
        if request.method not in methods:
            allow = ", ".join(sorted(methods))
            raise HTTPError(405, f"{request.method} not allowed here", (("Allow", allow),))
        return methods[request.method], args

    def _authorize(self, request: Request) -> None:
        authorize(request, self.ctx.config.admin.token)

    # Probes and views…

    async def page(self, request: Request) -> Response:
        html = importlib.resources.files("wsproxy.admin").joinpath("page.html").read_bytes()
        return 200, "text/html; charset=utf-8", html, ()

    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        ready = self.ctx.ready
        return _json({"ready": ready}, 200 if ready else 503)

    async def metrics(self, request: Request) -> Response:
        return 200, "text/plain; version=0.0.4; charset=utf-8", self.ctx.metrics.render(), ()

    async def backends(self, request: Request) -> Response:
        shown = self.ctx.backends_shown()
        total = sum(b.active for b in shown)
        return _json({"backends": [self._backend_view(b, total) for b in shown]})

    def _backend_view(self, b: BackendState, total: int) -> dict[str, object]:
        return {"name": b.name, "url": b.config.url, "healthy": b.healthy and not b.held,
                "draining": b.draining, "active": b.active, "source": b.source,
                "removed": b.removed,
                # Rebalancing: its part of the proxy's connections, and whether it
                # takes part (in rotation, warmed up).
                "share": round(b.active / total, 4) if total else 0.0,
                "warm": self.ctx.backend_warm(b)}

    async def connections(self, request: Request) -> Response:
        sort = request.query.get("sort", "age")
        if sort not in ("age", "traffic"):
            raise HTTPError(400, "sort is age or traffic")
        try:
            top = int(request.query.get("top", "0"))
        except ValueError:
            raise HTTPError(400, "top must be a whole number") from None
        conns = [c for c in self.ctx.registry.connections.values() if c.opened]
        conns.sort(key=_by_age if sort == "age" else _by_traffic, reverse=True)
        return _json({"connections": [c.view() for c in (conns[:top] if top > 0 else conns)]})

    # Drains…

    def _spread(self, request: Request) -> float | None:
        spread = request.json().get("spread")
        if spread is None:
            return None
        try:
            return parse_duration(spread)
        except ValueError as exc:
            raise HTTPError(400, f"spread: {exc}") from None

    def _backend(self, name: str) -> BackendState:
        backend = self.ctx.balancer.backends.get(name)
        if backend is None:
            raise HTTPError(404, f"no backend named {name!r}")
        return backend

    async def drain(self, request: Request) -> Response:
        drain = self.ctx.drain(self._spread(request))
        return _json({"draining": True, "spread_s": drain.spread})

    async def undrain(self, request: Request) -> Response:
        return _json({"draining": False, "was_draining": self.ctx.undrain()})

    async def backend_drain(self, request: Request, name: str) -> Response:
        drain = self.ctx.drain_backend(self._backend(name), self._spread(request))
        return _json({"backend": name, "draining": True, "spread_s": drain.spread})

    async def backend_undrain(self, request: Request, name: str) -> Response:
        was = self.ctx.undrain_backend(self._backend(name))
        return _json({"backend": name, "draining": False, "was_draining": was})

    async def drain_status(self, request: Request) -> Response:
        wait = request.query.get("wait")
        if wait is not None:
            try:
                seconds = min(parse_duration(wait), MAX_WAIT)
            except ValueError as exc:
                raise HTTPError(400, f"wait: {exc}") from None
            with anyio.move_on_after(seconds):
                for drain in list(self.ctx.drains.values()):
                    await drain.done.wait()
        return _json(self.ctx.drain_status())

    # Closing connections…

    async def delete_connection(self, request: Request, conn_id: str) -> Response:
        conn = self.ctx.registry.connections.get(conn_id)
        if conn is None or not conn.opened:
            raise HTTPError(404, f"no open connection {conn_id!r}")
        conn.drain_close(*closes.REVOKED)
        return _json({"closed": [conn_id]})

    async def close_connections(self, request: Request) -> Response:
        body = request.json()
        code = body.get("code", closes.REVOKED.code)
        if not isinstance(code, int) or not closes.is_admin_code(code):
            raise HTTPError(400, f"code must be {closes.ADMIN_CODES_TEXT}")
        reason = body.get("reason", closes.REVOKED.reason)
        if not isinstance(reason, str) or not _is_utf8(reason):
            raise HTTPError(400, "reason must be a UTF-8 string")
        if "subject" in body:
            field, wanted = "subject", body["subject"]
        elif "backend" in body:
            field, wanted = "backend", body["backend"]
        else:
            raise HTTPError(400, 'give "subject" or "backend"')
        closed = [c for c in list(self.ctx.registry.connections.values())
                  if c.opened and c.view()[field] == wanted]
        for conn in closed:
            conn.drain_close(code, reason)
        return _json({"closed": [c.id for c in closed]})

    # Rebalancing…

    async def rebalance(self, request: Request) -> Response:
        try:
            return _json(self.ctx.rebalance())
        except RebalanceRefused as exc:
            raise HTTPError(409, str(exc)) from None

    async def rebalance_status(self, request: Request) -> Response:
        return _json(self.ctx.rebalance_status())

    async def reload(self, request: Request) -> Response:
        errors = self.ctx.reload()
        if errors:
            return _json({"reloaded": False, "errors": errors}, 400)
        return _json({"reloaded": True})


def authorize(request: Request, token: str | None) -> None:
    """Refuse *request* (HTTPError) unless its bearer token is *token* (None: any), or a
    POST or DELETE that may come from another site."""
    if token is not None and request.path not in _PUBLIC:
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        valid = hmac.compare_digest(value.encode(), token.encode())
        if scheme.lower() != "bearer" or not valid:
            raise HTTPError(401, "a valid bearer token is needed",
                            (("WWW-Authenticate", 'Bearer realm="wsproxy-admin"'),))
    if request.method in ("POST", "DELETE"):
        # No cross-site requests from a browser, token or not: a foreign Origin is
        # refused, and a JSON content type cannot be sent cross-site without CORS.
        origin = request.headers.get("origin")
        host = request.headers.get("host", "")
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            raise HTTPError(403, "cross-site request refused")
        if request.method == "POST":
            content_type = request.headers.get("content-type", "").split(";")[0].strip()
            if content_type.lower() != JSON:
                raise HTTPError(415, "POST needs Content-Type: application/json")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from JSON "\ud800" escapes
        return False
    return True
