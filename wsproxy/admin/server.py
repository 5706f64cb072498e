"""The admin API's server: HTTP/1.1 (h11) on ``admin.host:admin.port``.

One h11 loop per connection, keep-alive included (after h11's
``examples/trio-server.py``); each request goes to admin.api.AdminAPI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Final, Protocol

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

from wsproxy.admin.api import JSON, Request, Response
from wsproxy.config import AdminConfig
from wsproxy.io.listen_socket import CAPACITY_ERRNOS, dual_stack_socket
from wsproxy.log import get_logger

log = get_logger()

MAX_BODY: Final = 64 << 10
#: A keep-alive connection idle this long is closed (admin clients are few and brief).
IDLE_TIMEOUT: Final = 30.0
#: How long the admin listener rests after running out of descriptors.
ACCEPT_RETRY_DELAY: Final = 0.1

#: Told of an accept that failed for want of descriptors (the proxy's rate-limited
#: warning, shared with the main listener).
AcceptFailed = Callable[[OSError], None]


class Handler(Protocol):
    """What answers the requests: admin.api.AdminAPI, or a parent of workers'
    (wsproxy.workers)."""

    async def handle(self, request: Request) -> Response: ...


async def serve_admin(
    api: Handler, cfg: AdminConfig, accept_failed: AcceptFailed, *,
    task_status: TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *api* on ``cfg.host:cfg.port`` until cancelled; ``task_status`` gets the
    bound address."""
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
            tg.start_soon(_accept, api, one, accept_failed, tg)


async def _accept(
    api: Handler, listener: SocketListener, accept_failed: AcceptFailed, tg: TaskGroup
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
            accept_failed(exc)
            await anyio.sleep(ACCEPT_RETRY_DELAY)
            continue
        tg.start_soon(_serve_connection, api, stream)


async def _serve_connection(api: Handler, stream: SocketStream) -> None:
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
                    response = 500, JSON, b'{"error": "internal error"}\n', ()
                await _send(conn, stream, response)
                log.debug("admin.request", method=request.method, path=request.path,
                          status=response[0], ms=round((time.monotonic() - started) * 1000, 1))
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    body = json.dumps({"error": "bad request"}).encode()
                    await _send(conn, stream, (exc.error_status_hint, JSON, body, ()))
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
