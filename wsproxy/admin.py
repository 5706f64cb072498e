"""The admin API: JSON over HTTP/1.1 (h11) on ``admin.host:admin.port``.

One h11 loop per connection, keep-alive included (after h11's
``examples/trio-server.py``). The routes are SPEC.md's; the work is done by the
ProxyContext's controls. Errors are JSON with a status, never a traceback.
"""

from __future__ import annotations

import hmac
import importlib.resources
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

import anyio
import h11
from anyio.abc import (
    Listener,
    SocketAttribute,
    SocketListener,
    SocketStream,
    TaskGroup,
    TaskStatus,
)

from wsproxy.core.states import Side
from wsproxy.io.listen_socket import CAPACITY_ERRNOS, dual_stack_socket
from wsproxy.log import get_logger
from wsproxy.units import parse_duration

if TYPE_CHECKING:
    from wsproxy.core.balance import BackendState
    from wsproxy.io.connection import Connection
    from wsproxy.supervisor import ProxyContext

log = get_logger()

MAX_BODY: Final = 64 << 10
#: A keep-alive connection idle this long is closed (admin clients are few and brief).
IDLE_TIMEOUT: Final = 30.0
#: How long the admin listener rests after running out of descriptors.
ACCEPT_RETRY_DELAY: Final = 0.1
#: GET /drain?wait= never blocks longer than this.
MAX_WAIT: Final = 600.0
_PUBLIC: Final = frozenset({"/", "/healthz", "/readyz"})
_JSON: Final = "application/json"


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
    return status, _JSON, json.dumps(value).encode() + b"\n", ()


class AdminAPI:
    """The routes, bound to one proxy."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx

    # Dispatch…

    async def handle(self, request: Request) -> Response:
        try:
            handler, args = self._route(request)
            self._authorize(request)
            return await handler(request, *args)
        except HTTPError as exc:
            body = json.dumps({"error": exc.message}).encode() + b"\n"
            return exc.status, _JSON, body, exc.headers

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
        token = self.ctx.config.admin.token
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
                if content_type.lower() != _JSON:
                    raise HTTPError(415, "POST needs Content-Type: application/json")

    # Probes and views…

    async def page(self, request: Request) -> Response:
        html = importlib.resources.files("wsproxy").joinpath("admin_page.html").read_bytes()
        return 200, "text/html; charset=utf-8", html, ()

    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        ready = self.ctx.ready
        return _json({"ready": ready}, 200 if ready else 503)

    async def metrics(self, request: Request) -> Response:
        return 200, "text/plain; version=0.0.4; charset=utf-8", self.ctx.metrics.render(), ()

    async def backends(self, request: Request) -> Response:
        return _json({"backends": [self._backend_view(b) for b in self.ctx.backends_shown()]})

    def _backend_view(self, b: BackendState) -> dict[str, object]:
        return {"name": b.name, "url": b.config.url, "healthy": b.healthy and not b.held,
                "draining": b.draining, "active": b.active, "source": b.source,
                "removed": b.removed}

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
        conn.drain_close(1008, "connection revoked")
        return _json({"closed": [conn_id]})

    async def close_connections(self, request: Request) -> Response:
        body = request.json()
        code = body.get("code", 1008)
        if not isinstance(code, int) or not (code in (1000, 1001, 1008, 1011, 1012, 1013)
                                             or 3000 <= code <= 4999):
            raise HTTPError(400, "code must be 1000, 1001, 1008, 1011-1013 or 3000-4999")
        reason = body.get("reason", "connection revoked")
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

    async def reload(self, request: Request) -> Response:
        errors = self.ctx.reload()
        if errors:
            return _json({"reloaded": False, "errors": errors}, 400)
        return _json({"reloaded": True})


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from JSON "\ud800" escapes
        return False
    return True


async def serve_admin(
    ctx: ProxyContext, *, task_status: TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve the admin API until cancelled; ``task_status`` gets the bound address."""
    cfg = ctx.config.admin
    api = AdminAPI(ctx)
    sock = dual_stack_socket(cfg.host, cfg.port)  # "::": IPv4 too, as on the main listener
    if sock is not None:
        sock.listen()
        listener: Listener[SocketStream] = await SocketListener.from_socket(sock)
    else:
        listener = await anyio.create_tcp_listener(local_host=cfg.host, local_port=cfg.port)
    address = listener.extra(SocketAttribute.local_address)
    assert isinstance(address, tuple)  # an IP listener, never a UNIX socket
    host, port = address[0], address[1]
    log.info("admin.listening", address=f"{host}:{port}")
    task_status.started((str(host), int(port)))
    # A MultiListener when the host named several addresses ("localhost").
    listeners = getattr(listener, "listeners", [listener])
    async with listener, anyio.create_task_group() as tg:
        for one in listeners:
            tg.start_soon(_accept, ctx, api, one, tg)


async def _accept(
    ctx: ProxyContext, api: AdminAPI, listener: SocketListener, tg: TaskGroup
) -> None:
    """Accept admin clients until cancelled; each is served by a task of *tg*.

    Not anyio's ``serve()``: an accept that fails ends it, and the proxy with it. Out
    of descriptors is the proxy's trouble of the moment, reported (rate-limited) as
    the main listener's, and accepting resumes shortly.
    """
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in CAPACITY_ERRNOS:
                raise
            ctx.loop_exception(ctx.loop, {"message": "accept failed", "exception": exc})
            await anyio.sleep(ACCEPT_RETRY_DELAY)
            continue
        tg.start_soon(_serve_connection, api, stream)


async def _serve_connection(api: AdminAPI, stream: SocketStream) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY)
    async with stream:
        while True:
            try:
                with anyio.fail_after(IDLE_TIMEOUT):
                    request = await _read_request(conn, stream)
                if request is None:
                    return
                started = time.monotonic()
                try:
                    response = await api.handle(request)
                except Exception:  # a bug of ours: answer 500, keep the listener up
                    log.exception("admin.failed", method=request.method, path=request.path)
                    response = 500, _JSON, b'{"error": "internal error"}\n', ()
                await _send(conn, stream, response)
                log.debug("admin.request", method=request.method, path=request.path,
                          status=response[0], ms=round((time.monotonic() - started) * 1000, 1))
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    body = json.dumps({"error": "bad request"}).encode()
                    await _send(conn, stream, (exc.error_status_hint, _JSON, body, ()))
                return
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return  # the client went away or idled out: nothing to answer
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()


async def _read_request(conn: h11.Connection, stream: SocketStream) -> Request | None:
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                conn.receive_data(await stream.receive())
            except anyio.EndOfStream:
                conn.receive_data(b"")
            continue
        if isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise h11.RemoteProtocolError("body too large", error_status_hint=413)
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            headers = {k.decode().lower(): v.decode("latin-1") for k, v in head.headers}
            return Request(head.method.decode(), head.target.decode("latin-1"), headers,
                           bytes(body))
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


async def _send(conn: h11.Connection, stream: SocketStream, response: Response) -> None:
    status, content_type, body, extra = response
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
               ("Cache-Control", "no-store"), *extra]
    data = conn.send(h11.Response(status_code=status, headers=headers))
    data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send(data)
