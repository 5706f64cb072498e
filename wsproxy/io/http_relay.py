"""Plain HTTP on the main listener (``plain_http: proxy``): one relay per client connection.

A client connection whose first request has no Upgrade is handed over by the front
door (wsproxy.io.front) to an ``HttpRelay``, with the h11 parser that read that
request, so that it is not parsed again. The relay reads requests with h11, one at a time
(pipelined ones wait their turn in h11's buffer with reading paused), sends each to a
backend over a pooled keep-alive ``BackendLink`` and streams both bodies through as
they come: h11 re-frames them, nothing is buffered whole, and a full write buffer on
one side stops reading on the other. A later request that asks for a WebSocket
upgrade goes back through the front door to a fresh Connection, parsed.

A client that leaves mid-request is seen: while a request is in flight the relay keeps
reading its client (bytes of a pipelined next request wait in h11's buffer, up to
``limits.max_request_head``), so an EOF or a reset arrives at once. An EOF once the
request is whole and before its response has ended means the client is gone, as
nginx takes it (``proxy_ignore_client_abort off``); HTTP/1.1 allows a client to
half-close after its request, but hardly any does, and a long-poll whose client left
must not hold a backend, nor a drain. The backend request is then abandoned (its
connection aborted, never pooled) and logged ``error: client_gone``. An exchange the
proxy cuts is logged as the proxy's: the timeout's name, ``drain_timeout``, or
``proxy_closed``.

Like the WebSocket side, a relay holds no task: transports' callbacks drive it, and
one timer at a time bounds what it waits for (the idle keep-alive, a request head, a
request body, a backend's answer). Only dialling and authentication run as tasks.

A relay obeys the config its client connection was accepted under (wsproxy.config,
"When a value is read"): the Connection's ``settings``, for all its requests, and the
fresh Connection a later upgrade goes to keeps them too. ``self.ctx`` is asked only
for what the rule calls live: the balancer and its hash key, the backend TLS context.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Final, Protocol

import h11

from wsproxy.auth import AuthFailed
from wsproxy.core.handshake import Forwarding, RequestHead, client_address, error_response
from wsproxy.core.http import (
    Header,
    HttpRefused,
    ParsedRequest,
    error_answer,
    forward_head,
    forward_response,
    head_length,
    is_upgrade,
    plain_request,
    probe_target,
)
from wsproxy.core.http_heads import (
    NOT_PLAIN,
    ForwardTemplate,
    PlainRequest,
    PlainResponse,
    forward_request_bytes,
    forward_response_bytes,
    forward_template,
    read_request,
    read_response,
    request_bytes,
)
from wsproxy.core.paths import UnsafeTarget, backend_target
from wsproxy.io.http_pool import BackendLink
from wsproxy.io.pass_end import PassEndWriter
from wsproxy.io.upstream import (
    NO_BACKEND,
    OUT_OF_DESCRIPTORS,
    OutOfDescriptors,
    authenticate,
    candidates,
    dial_backend,
    sticky_header,
    take_sticky,
)
from wsproxy.log import (
    direct_put,
    get_logger,
    info_enabled,
    info_line,
    request_fields,
    request_line_of,
)

if TYPE_CHECKING:
    from wsproxy.auth import Identity
    from wsproxy.core.balance import BackendState
    from wsproxy.io.ports import ConnectionSettings, HttpRelayOwner

log = get_logger()

_RETRY_AFTER: Final = (("Retry-After", "5"),)
#: Read and write plain-form heads without h11 (wsproxy.core.http_heads); the tests
#: turn it off to compare both paths.
FAST_HEADS = True
#: What the relay's one timer is waiting for.
_IDLE, _HEAD, _EXCHANGE = "idle", "head", "exchange"


class WebSocketDoor(Protocol):
    """Where a relay hands its client back when a request asks for an upgrade: the
    front door (wsproxy.io.front)."""

    def to_websocket(
        self, transport: asyncio.Transport, parsed: ParsedRequest, *, peer_ip: str,
        settings: ConnectionSettings,
    ) -> None:
        """Let a fresh Connection serve *transport*, starting with the upgrade in *parsed*,
        under the connection's *settings*."""


class HttpClientProtocol(asyncio.Protocol):
    """The client transport's protocol once its connection carries plain HTTP."""

    __slots__ = ("_relay", "data_received")

    def __init__(self, relay: HttpRelay) -> None:
        self._relay = relay
        #: The relay's own method: a Python frame less per read.
        self.data_received = relay.client_data  # type: ignore[method-assign]

    def eof_received(self) -> bool:
        self._relay.client_eof()
        return True  # an idle half-closed client is closed by the relay, not by asyncio

    def connection_lost(self, exc: Exception | None) -> None:
        self._relay.client_lost()

    def pause_writing(self) -> None:
        self._relay.client_paused(True)

    def resume_writing(self) -> None:
        self._relay.client_paused(False)


class _Exchange:
    """One request and its response, from the request head to the response's end."""

    __slots__ = (
        "backend", "body_in", "bytes_out", "candidates", "client_at", "client_full",
        "close_sent", "counted", "error", "fast", "forwarded", "head", "left", "link",
        "link_paused", "relay", "request_done", "request_id", "response_buffer",
        "response_keep_alive", "response_left", "response_started", "retried", "sent_body",
        "set_cookie", "started", "status", "sticky", "target", "upstream_at", "upstream_full",
        "view", "wire",
    )

    def __init__(self, relay: HttpRelay, head: PlainRequest, request_id: str,
                 now: float, fast: bool) -> None:
        self.relay = relay
        #: Told to the plain HTTP side as in flight on ``backend`` (a backend drain counts it).
        self.counted = False
        self.head = head
        self.request_id = request_id
        self.started = self.client_at = self.upstream_at = now
        #: Both legs framed by the relay itself (plain heads, counted bodies), not by
        #: h11; h11 takes over (``_to_h11()``) when the response is not plain, or
        #: for the proxy's own answer.
        self.fast = fast
        #: Fast: the request body bytes still to come from the client, and whether its
        #: end was passed on (as h11 passes its EndOfMessage: once a link is there).
        self.left = head.length
        self.request_done = False
        #: Fast: the response body bytes still to come (-1: its head is not read yet),
        #: a head's first bytes, and whether the backend keeps the connection.
        self.response_left = -1
        self.response_buffer = b""
        self.response_keep_alive = False
        #: Fast: the client's answer said ``Connection: close``.
        self.close_sent = False
        #: The target made safe (paths.backend_target()).
        self.target = head.target
        #: What auth and hashing read of the request (credentials taken out after auth):
        #: made only for them (HttpRelay._view()).
        self.view: RequestHead | None = None
        #: The target and headers of the request to the backend, once made; or its
        #: head's bytes, made without them (fast, as the client sent it).
        self.forwarded: tuple[bytes, list[Header]] | None = None
        self.wire: bytes | None = None
        self.candidates: list[BackendState] = []
        self.backend: BackendState | None = None
        self.link: BackendLink | None = None
        self.status: int | None = None
        self.error: str | None = None
        self.response_started = False
        self.sent_body = False
        self.retried = False
        self.body_in = 0
        self.bytes_out = 0
        #: Write buffers full: the backend's (stop reading the client), the client's.
        self.upstream_full = False
        self.client_full = False
        self.link_paused = False
        #: balance: cookie: the request's sticky cookie values (None under other policies),
        #: and the Set-Cookie its answer gets when the backend is not the one they name.
        self.sticky: tuple[str, ...] | None = None
        self.set_cookie: tuple[tuple[bytes, bytes], ...] = ()

    # A backend drain's member (io.ports.PlainExchange)…

    def drain_close(self, code: int, reason: str) -> None:
        """Its point of the backend's drain: end it, as a WebSocket gets its close frame."""
        self.relay.drain_exchange(self, "drained")

    def terminate(self, code: int, reason: str) -> None:
        """The drain's deadline: logged as such, as a cut of the whole plain side is."""
        self.relay.drain_exchange(self, "drain_timeout")


class HttpRelay:
    """Relays the plain HTTP requests of one client connection to backends."""

    __slots__ = (
        "_buffer",
        "_close_after",
        "_closed",
        "_count",
        "_deadline",
        "_door",
        "_eof",
        "_ex",
        "_first",
        "_h11",
        "_interval",
        "_keepalive",
        "_log_fields",
        "_out",
        "_pumping",
        "_reading",
        "_template",
        "_template_for",
        "_timer",
        "_timer_at",
        "_timer_kind",
        "_timer_span",
        "_transport",
        "client_ip",
        "ctx",
        "forwarded_for",
        "id",
        "identity",
        "peer_ip",
        "settings",
    )

    def __init__(
        self, ctx: HttpRelayOwner, transport: asyncio.Transport, *, conn_id: str, peer_ip: str,
        first: ParsedRequest, door: WebSocketDoor, settings: ConnectionSettings,
    ) -> None:
        """*first*: the connection's first request, with the parser that read it (which
        reads the rest); *door*: where a later upgrade goes; *settings*: the ones the
        client connection was accepted under."""
        self.ctx = ctx
        #: What this relay obeys until it ends: its client connection's.
        self.settings = settings
        self.id = conn_id
        self.peer_ip = self.client_ip = self.forwarded_for = peer_ip
        self.identity: Identity | None = None
        self._transport = transport
        #: Every write to the client, and its close, at the end of the loop's pass.
        self._out = PassEndWriter(transport, ctx.pass_end)
        self._door = door
        #: The client's parser while h11 reads its requests (the first one's, and any
        #: head that is not plain); None while the relay reads them itself, from
        #: ``_buffer`` (and ``_eof``: the client has half-closed).
        self._h11: h11.Connection | None = first.parser
        self._buffer = b""
        self._eof = False
        self._first: ParsedRequest | None = first
        self._ex: _Exchange | None = None
        self._count = 0
        self._closed = False
        #: Close once the exchange in flight is over (a drain's turn came).
        self._close_after = False
        self._pumping = False
        self._reading = True
        #: One timer at a time, re-armed by moving ``_deadline`` (_arm()).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = self._deadline = 0.0
        self._timer_kind: str | None = None
        #: The exchange timer's period (_check_interval()), and the shortest delay _arm()
        #: is given but for the exchange timer's remainders: no timer is set further
        #: ahead than that, so that no deadline is ever earlier than the timer's, and
        #: each request moves ``_deadline`` only (the timer re-arms itself).
        http = settings.config.http
        self._interval = min(http.body_timeout, http.response_timeout, http.stream_idle_timeout)
        self._keepalive = http.keepalive_timeout
        self._timer_span = min(self._interval, http.keepalive_timeout,
                               settings.config.limits.handshake_timeout)
        #: The forwarded heads' additions (http_heads.forward_template()), and the
        #: backend config, X-Forwarded-For chain and identity they were made for.
        self._template: ForwardTemplate | None = None
        self._template_for: tuple[object, str, Identity | None] | None = None
        #: The middle of the last access line (log.request_fields()) and what it was
        #: rendered from: head, status, backend config and client.
        self._log_fields: tuple[PlainRequest, int | None, object, str, str] | None = None
        ctx.http.add(self)
        transport.set_protocol(HttpClientProtocol(self))
        self._arm(_HEAD, settings.config.limits.handshake_timeout)
        self._pump_client()

    @property
    def busy(self) -> bool:
        """Whether a request is in flight."""
        return self._ex is not None

    # The client's side…

    def client_data(self, data: bytes) -> None:
        if self._closed:
            return
        if self._ex is not None:
            self._ex.client_at = self.ctx.loop.time()
        h = self._h11
        if h is None:
            self._buffer = self._buffer + data if self._buffer else data
        else:
            h.receive_data(data)
        self._pump_client()

    def client_eof(self) -> None:
        if self._closed:
            return
        ex = self._ex
        if ex is not None and not self._request_open():
            # The request is whole, its answer not over: the client left (module doc).
            ex.error = "client_gone"
            self._abandon(ex)
            return
        if self._h11 is None:
            self._eof = True
        else:
            self._h11.receive_data(b"")
        self._pump_client()

    def _request_open(self) -> bool:
        """Whether the body of the request in flight has more to come."""
        h = self._h11
        if h is None:
            return self._ex is not None and not self._ex.request_done
        return h.their_state is h11.SEND_BODY

    def client_lost(self) -> None:
        by_proxy = self._closed  # the relay closed it: whatever was in flight is its doing
        self._closed = True
        self._cancel_timer()
        ex = self._ex
        if ex is not None:
            ex.error = ex.error or ("proxy_closed" if by_proxy else "client_gone")
            self._abandon(ex)
        self.ctx.http.remove(self)

    def _abandon(self, ex: _Exchange) -> None:
        """End the exchange in flight without an answer: its backend connection is
        aborted (a request cut short leaves it unfit for the pool), the client's too."""
        if ex.link is not None:
            ex.link.close(abort=True)
            ex.link = None
        if not self._closed:
            self._abort_client()
        self._finish()

    def client_paused(self, paused: bool) -> None:
        """The client's write buffer filled (or drained): pause (resume) the backend."""
        ex = self._ex
        if ex is None:
            return
        ex.client_full = paused
        if not paused:
            ex.upstream_at = self.ctx.loop.time()
        self._pause_link(ex, paused)

    def _pump_client(self) -> None:
        """Take what h11 has from the client: a new request head, or body for the backend."""
        if self._pumping:
            return  # the loop below is already running further up the stack
        self._pumping = True
        try:
            while not self._closed:
                ex = self._ex
                if ex is None:
                    if not self._read_head():
                        break
                elif ex.link is None or (
                    ex.request_done and self._h11 is None  # (_forward_counted_body()'s end)
                ) or not self._forward_body(ex):
                    break
        finally:
            self._pumping = False
        self._update_reading()

    def _read_head(self) -> bool:
        """Start the next request if its head is whole; False to wait for bytes."""
        first = self._first
        if first is not None:
            self._first = None
            return self._read_first(first)
        h = self._h11
        if h is None:
            buffered = self._buffer
            if not buffered:
                if self._eof:
                    self._close_client()
                return False
            max_head = self.settings.config.limits.max_request_head
            read = read_request(buffered, max_head) if FAST_HEADS else None
            if read is not None:
                head, size = read
                self._buffer = buffered[size:]
                self._begin(head)
                return True
            # Not plain (or not whole yet): h11 reads it, and the smuggling checks below.
            h = self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
            h.receive_data(buffered)
            self._buffer = b""
            if self._eof:
                h.receive_data(b"")
        if h.their_state is not h11.IDLE:
            self._close_client()
            return False
        buffered, closed = h.trailing_data
        if not buffered:
            if closed:
                self._close_client()
            return False
        if self._timer_kind == _IDLE:
            self._arm(_HEAD, self.settings.config.limits.handshake_timeout)
        try:
            if head_length(buffered, self.settings.config.limits.max_request_head) is None:
                if closed:
                    self._close_client()
                return False
            event = h.next_event()
        except HttpRefused as exc:
            self._refuse(exc.status, exc.reason)
            return False
        except h11.RemoteProtocolError as exc:
            self._refuse(exc.error_status_hint, "malformed request")
            return False
        if not isinstance(event, h11.Request):
            return False
        if is_upgrade(event):
            self._hand_back(ParsedRequest(h, event, buffered))
            return False
        self._begin(PlainRequest.of(event))
        return True

    def _read_first(self, first: ParsedRequest) -> bool:
        """The first request, which the front door's read parsed: the relay's own checks
        of its head still apply (h11 read it whole, so head_length() finds its end)."""
        try:
            head_length(first.received, self.settings.config.limits.max_request_head)
        except HttpRefused as exc:
            self._refuse(exc.status, exc.reason)
            return False
        self._begin(PlainRequest.of(first.request))
        return True

    def _forward_body(self, ex: _Exchange) -> bool:
        """Pass one event of the request body on; False when there is nothing to pass."""
        assert ex.link is not None
        h = self._h11
        if h is None:
            return self._forward_counted_body(ex)
        if h.their_state is not h11.SEND_BODY:
            return False
        try:
            event = h.next_event()
        except h11.RemoteProtocolError:
            # A broken chunk or a client gone mid-body: that request cannot complete.
            ex.error = "bad_request_body"
            self._answer(400, "malformed request body", close=True)
            return False
        if event is h11.NEED_DATA:
            return False
        link = ex.link
        if isinstance(event, h11.Data):
            if self._body_over_limit(ex, len(event.data)):
                return False
            link.write(link.h11.send(event))
        elif isinstance(event, h11.EndOfMessage):
            link.write(link.h11.send(h11.EndOfMessage()))  # trailers are hop-by-hop here
            ex.upstream_at = self.ctx.loop.time()
        return True

    def _forward_counted_body(self, ex: _Exchange) -> bool:
        """_forward_body() of a request whose head the relay read: the client's bytes
        as they come, up to its Content-Length."""
        link = ex.link
        assert link is not None
        if ex.request_done:
            return False
        left = ex.left
        if not left:
            ex.request_done = True
            ex.upstream_at = self.ctx.loop.time()
            return True
        buffered = self._buffer
        if not buffered:
            if self._eof:  # as h11 takes a client gone mid-body
                ex.error = "bad_request_body"
                self._answer(400, "malformed request body", close=True)
            return False
        if len(buffered) > left:
            chunk, self._buffer = buffered[:left], buffered[left:]
        else:
            chunk, self._buffer = buffered, b""
        ex.left = left - len(chunk)
        if self._body_over_limit(ex, len(chunk)):
            return False
        link.write(chunk)
        return True  # the next call passes the end on

    def _body_over_limit(self, ex: _Exchange, size: int) -> bool:
        """Count *size* more bytes of the request's body; past ``http.max_body_size``,
        answer 413 (and True) instead of passing them on."""
        ex.body_in += size
        limit = self.settings.config.http.max_body_size
        if limit and ex.body_in > limit:
            ex.error = "body_too_large"
            self._answer(413, "request body too large", close=True)
            return True
        ex.sent_body = True
        return False

    # A request…

    def _begin(self, head: PlainRequest) -> None:
        ctx = self.ctx
        settings = self.settings
        self._count += 1
        ex = self._ex = _Exchange(self, head, f"{self.id}-{self._count}", ctx.loop.time(),
                                  self._h11 is None)
        self._timer_kind = None  # (the handle stays for the next _arm(): _timed_out())
        probe = probe_target(head.method, head.target)
        if probe is not None:
            self._answer(*ctx.probe_answer(probe))
            return
        http = ctx.http
        if http.refusing():
            ex.error = "draining"
            self._answer(503, "proxy is draining", _RETRY_AFTER, close=True)
            return
        limit = settings.config.http.max_body_size
        if limit and head.length > limit:
            ex.error = "body_too_large"
            self._answer(413, "request body too large", close=True)
            return
        safe = head.backend_target
        if safe is None:
            try:
                safe = head.backend_target = backend_target(head.target)
            except UnsafeTarget as exc:
                ex.error = "bad_request"
                self._answer(400, str(exc), close=True)
                return
        ex.target = safe
        trusted = settings.config.trusted_proxies
        if trusted:  # (else the client is the peer, as client_address() says)
            self.client_ip, self.forwarded_for = client_address(
                self.peer_ip, self._view(ex).header(b"x-forwarded-for"), trusted
            )
        # (Nothing more is read from the client until a backend is ready: _begin() runs
        # in _pump_client(), whose _update_reading() sees to it once routing is done.)
        if settings.authenticator is not None:
            ctx.spawn(lambda: self._authenticate(ex))
        else:
            self._route(ex)

    async def _authenticate(self, ex: _Exchange) -> None:
        settings = self.settings
        authenticator = settings.authenticator
        assert authenticator is not None
        try:
            admitted = await authenticate(authenticator, settings.config.auth, self._view(ex),
                                          client_ip=self.client_ip, conn_id=self.id)
        except AuthFailed as exc:
            if self._ex is ex and not self._closed:
                ex.error = f"auth_{exc.reason}"
                self._answer(exc.status, exc.message, exc.headers)
            return
        if self._ex is not ex or self._closed:
            return
        self.identity = admitted.identity
        ex.view = admitted.request
        self._route(ex)

    def _view(self, ex: _Exchange) -> RequestHead:
        """What auth and balancing read of the request in flight, made when first asked."""
        if ex.view is None:
            ex.view = plain_request(ex.head.method, target=ex.target, headers=ex.head.headers)
        return ex.view

    def _route(self, ex: _Exchange) -> None:
        config = self.ctx.config  # balance.* and sticky_cookie.* are live: each pick
        policy = config.balance
        if policy.policy == "cookie":
            # The proxy's cookie: read here, and never seen by the backend.
            ex.view, ex.sticky = take_sticky(self._view(ex), config.sticky_cookie.name)
        # Only a hash key reads the request (balance.request_key()).
        if policy.hash_key is None:  # (upstream.candidates() with no key: a call less)
            ex.candidates = self.ctx.balancer.candidates(None, ex.sticky or ())
        else:
            ex.candidates = candidates(self.ctx.balancer, self._view(ex), policy.hash_key,
                                       ex.sticky or ())
        if not ex.candidates:
            ex.error = "no_backend"
            self._answer(*NO_BACKEND)
            return
        self._try_next(ex)

    def _try_next(self, ex: _Exchange) -> None:
        """Use an idle link to the next candidate, or dial it; 502 when none is left."""
        if not ex.candidates:
            ex.error = "backend_unreachable"
            self._answer(502, "backend unreachable")
            return
        backend = ex.candidates.pop(0)
        if not backend.usable:  # left rotation (a drain) since the pick
            self._try_next(ex)
            return
        link = self.ctx.http.pool.take(backend)
        if link is not None:
            self._attach(ex, link)
        else:
            self.ctx.spawn(lambda: self._dial(ex, backend))

    async def _dial(self, ex: _Exchange, backend: BackendState) -> None:
        ctx = self.ctx
        link = BackendLink(backend, ctx.pass_end)
        try:
            async with asyncio.timeout(self.settings.config.limits.backend_timeout):
                # backend_tls is live: the context and server name in force now.
                await dial_backend(ctx.loop, lambda: link, backend, ctx.backend_ssl,
                                   ctx.config.backend_tls, ctx.engine)
        except OutOfDescriptors:
            # The proxy's own trouble: no backend is blamed, none other tried.
            if self._ex is ex and not self._closed:
                ex.error = "out_of_descriptors"
                self._answer(*OUT_OF_DESCRIPTORS)
            return
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            log.warning("upstream.failed", conn_id=self.id, request_id=ex.request_id,
                        backend=backend.name, error=str(exc) or type(exc).__name__)
            if self._ex is ex and not self._closed:
                self._try_next(ex)
            return
        if self._ex is not ex or self._closed:
            link.close()  # the client went away meanwhile
            return
        if not backend.usable:  # it began draining during the dial: not there
            link.close()
            self._try_next(ex)
            return
        self._attach(ex, link)

    def _attach(self, ex: _Exchange, link: BackendLink) -> None:
        """Send the request head on *link*; the body follows as the client sends it."""
        ex.link = link
        if ex.counted and ex.backend is not link.backend:  # a retry went elsewhere
            ex.counted = False
            self.ctx.http.exchange_ended(ex)
        ex.backend = link.backend
        link.user = self
        if not ex.counted:
            ex.counted = True
            self.ctx.http.exchange_started(ex)
            if ex.link is not link:  # a drain of that backend ended it at once
                return
        head = ex.head
        view = ex.view
        fields = head.fields
        if ex.fast and fields is not None and (view is None or (
            view.headers is head.headers and view.target is ex.target
        )):  # the client's head as read: its forwarded bytes from the connection's template
            if ex.wire is None:
                made_for = self._template_for
                template = self._template
                if (
                    template is None or made_for is None or made_for[0] is not link.backend.config
                    or made_for[1] != self.forwarded_for or made_for[2] is not self.identity
                ):
                    try:
                        template = self._new_template(ex, link)
                    except h11.LocalProtocolError as exc:  # as forward_head() below
                        self._not_forwardable(ex, link, exc)
                        return
                ex.wire = forward_request_bytes(head, fields, ex.target, template,
                                                ex.request_id.encode("latin-1"))
                if ex.sticky is not None:
                    self._sticky_cookie(ex, link, self._template)
            ex.response_left, ex.response_buffer = -1, b""  # a retry starts afresh
            link.write(ex.wire)
            ex.upstream_at = ex.client_at = self.ctx.loop.time()
            if not ex.left:  # no body: its end is passed on with the head
                ex.request_done = True
            self._arm(_EXCHANGE, self._interval)
            if not self._pumping:  # (a dial's or auth's task: else the pump goes on)
                self._pump_client()
            return
        try:
            if ex.forwarded is None:
                view = self._view(ex)
                forwarding = self.ctx.forwarding(self.client_ip, self.forwarded_for,
                                                 ex.request_id, self.identity)
                ex.forwarded = forward_head(
                    head.http_version, target=view.target, headers=view.headers,
                    authority=link.backend.config.authority,
                    path_prefix=link.backend.config.path,
                    forwarding=forwarding,
                    owned=self.settings.owned_headers,
                )
                self._sticky_cookie(ex, link, forwarding)
            target, headers = ex.forwarded
            if ex.fast:
                ex.response_left, ex.response_buffer = -1, b""  # a retry starts afresh
                link.write(request_bytes(head.method, target, headers))
            else:
                link.write(link.h11.send(
                    h11.Request(method=head.method, target=target, headers=headers,
                                _parsed=True)
                ))
        except h11.LocalProtocolError as exc:  # a header value h11 will not write, or ours
            self._not_forwardable(ex, link, exc)
            return
        ex.upstream_at = ex.client_at = self.ctx.loop.time()
        self._arm(_EXCHANGE, self._interval)
        self._pump_client()

    def _not_forwardable(self, ex: _Exchange, link: BackendLink,
                         exc: h11.LocalProtocolError) -> None:
        """A value the request would carry is no valid header value: 400, nothing sent."""
        ex.link = None
        link.close()
        ex.error = "bad_request"
        self._answer(400, f"request not forwardable: {exc}", close=True)

    def _new_template(self, ex: _Exchange, link: BackendLink) -> ForwardTemplate:
        """The connection's template of forwarded heads, made anew (_attach()): its
        backend, client chain or identity changed."""
        config = link.backend.config
        forwarding = self.ctx.forwarding(self.client_ip, self.forwarded_for, ex.request_id,
                                         self.identity)
        template = self._template = forward_template(
            config.authority, config.path, forwarding, self.settings.owned_headers)
        self._template_for = (config, self.forwarded_for, self.identity)
        return template

    def _sticky_cookie(self, ex: _Exchange, link: BackendLink,
                       forwarding: Forwarding | ForwardTemplate | None) -> None:
        """balance: cookie: the Set-Cookie the answer gets, when the backend is not the
        one the request's cookie names (*forwarding*: what says the client's protocol)."""
        if ex.sticky is not None:
            assert forwarding is not None
            ex.set_cookie = sticky_header(self.ctx.config.sticky_cookie, link.backend.name,
                                          ex.sticky, https=forwarding.proto == "https")

    # The backend's side…

    def upstream_data(self, data: bytes) -> None:
        ex = self._ex
        if ex is None or ex.link is None:
            return
        ex.upstream_at = self.ctx.loop.time()
        if ex.fast:
            self._relay_plain(ex, data)
            return
        ex.link.h11.receive_data(data)
        self._pump_upstream(ex)

    def upstream_eof(self) -> None:
        ex = self._ex
        if ex is None or ex.link is None:
            return
        link = ex.link
        if ex.response_started and ex.fast:  # a cut: a plain body ends by its length
            self._bad_response(ex, h11.RemoteProtocolError(
                "peer closed connection without sending complete message body: received "
                f"{ex.bytes_out} bytes; expected {ex.bytes_out + ex.response_left}"
            ))
            return
        if ex.response_started:  # the end of a body without a length, or a cut
            link.h11.receive_data(b"")
            self._pump_upstream(ex)
            if ex.link is not link:
                return
        ex.link = None
        link.close()
        if ex.response_started:
            ex.error = "backend_closed"
            self._abort_client()  # the client must see a cut, not a short answer
        elif link.reused and not ex.sent_body and not ex.retried:
            # A pooled connection the backend closed while it sat idle: once more, fresh.
            ex.retried = True
            backend = link.backend
            self.ctx.spawn(lambda: self._dial(ex, backend))
        else:
            ex.error = "backend_closed"
            self._answer(502, "backend closed the connection")

    def upstream_paused(self, paused: bool) -> None:
        """The backend's write buffer filled (or drained): pause (resume) the client."""
        ex = self._ex
        if ex is None:
            return
        ex.upstream_full = paused
        if not paused:
            ex.client_at = self.ctx.loop.time()
        self._update_reading()

    def _relay_plain(self, ex: _Exchange, data: bytes) -> None:
        """Relay what the backend sent to a fast exchange: a plain head rewritten and the
        body as it comes, up to its length; anything else is h11's (_to_h11())."""
        head = b""
        if ex.response_left < 0:
            if ex.response_buffer:
                data = ex.response_buffer + data
                ex.response_buffer = b""
            read = read_response(data, ex.head.method)
            if read is None:  # not whole yet
                ex.response_buffer = data
                return
            if not isinstance(read, PlainResponse):
                assert read == NOT_PLAIN
                self._to_h11(ex)
                assert ex.link is not None
                ex.link.h11.receive_data(data)
                self._pump_upstream(ex)
                return
            ex.status = read.status
            ex.response_started = True
            close = self._close_after or not ex.head.keep_alive or self._unready()
            assert read.fields is not None
            try:
                head = forward_response_bytes(read, read.fields, close=close,
                                              extra=ex.set_cookie)
            except h11.LocalProtocolError as exc:
                self._bad_response(ex, exc)
                return
            ex.close_sent = close
            ex.response_keep_alive = read.keep_alive
            ex.response_left = read.length
            data = data[read.size:]
        left = ex.response_left
        size = len(data)
        if size > left:  # bytes after the answer: the backend is not to be trusted
            data = data[:left]
            size = left
            ex.response_keep_alive = False
        if size:
            ex.bytes_out += size
            left = ex.response_left = left - size
        # One write: a small answer is one segment.
        self._out.write(head + data if head else data)
        if not left:
            self._release_link(ex, clean=ex.response_keep_alive and ex.request_done)
            self._finish()

    def _to_h11(self, ex: _Exchange) -> None:
        """Hand a fast exchange to h11 on both legs: the response is not plain, or the
        proxy answers itself. Each parser is told what its leg has seen so far (the
        request's method, version, keep-alive and the body still to come), so that it
        frames the rest as if it had read everything."""
        ex.fast = False
        head = ex.head
        if self._h11 is None:
            h = self._h11 = h11.Connection(
                h11.SERVER, max_incomplete_event_size=self.settings.config.limits.max_request_head
            )
            h.receive_data(b"%s / HTTP/%s\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n" % (
                head.method, head.http_version,
                b"" if head.keep_alive else b"Connection: close\r\n", ex.left,
            ))
            h.next_event()  # the Request
            if ex.request_done:
                h.next_event()  # its EndOfMessage
            if self._buffer:  # (an empty one would tell h11 the client closed)
                h.receive_data(self._buffer)
            self._buffer = b""
            if self._eof:
                h.receive_data(b"")
        link = ex.link
        if link is not None:
            link.h11.send(h11.Request(method=head.method, target=b"/", headers=[
                (b"Host", b"x"), (b"Content-Length", b"%d" % ex.left)]))
            if ex.request_done:
                link.h11.send(h11.EndOfMessage())

    def _bad_response(self, ex: _Exchange, exc: h11.ProtocolError, out: Sequence[bytes] = ()
                      ) -> None:
        """The backend's answer cannot be relayed: a cut if it was begun, else a 502."""
        link = ex.link
        assert link is not None
        log.warning("upstream.bad_response", conn_id=self.id, request_id=ex.request_id,
                    backend=link.backend.name, error=str(exc))
        self._out.writelines(out)
        ex.link = None
        link.close(abort=True)
        ex.error = "bad_response"
        if ex.response_started:
            self._abort_client()
        else:
            self._answer(502, "invalid response from backend")

    def _pump_upstream(self, ex: _Exchange) -> None:
        """Relay what the backend sent; one write per read (a small answer is one segment)."""
        link = ex.link
        assert link is not None
        h = self._h11
        assert h is not None
        out: list[bytes] = []
        try:
            while True:
                event = link.h11.next_event()
                if isinstance(event, h11.Data):
                    ex.bytes_out += len(event.data)
                    out += h.send_with_data_passthrough(event) or ()
                elif isinstance(event, h11.Response | h11.InformationalResponse):
                    if event.status_code == 101:
                        raise h11.RemoteProtocolError("101 to a request without Upgrade")
                    if isinstance(event, h11.Response):
                        ex.status = event.status_code
                        ex.response_started = True
                    out.append(h.send(forward_response(
                        event, close=self._closing(),
                        extra=ex.set_cookie if isinstance(event, h11.Response) else (),
                    )) or b"")
                elif isinstance(event, h11.EndOfMessage):
                    out.append(h.send(h11.EndOfMessage()) or b"")
                    self._out.writelines(out)
                    self._release_link(ex)
                    self._finish()
                    return
                else:  # NEED_DATA; or ConnectionClosed early, which upstream_eof takes on
                    break
        except (h11.RemoteProtocolError, h11.LocalProtocolError) as exc:
            self._bad_response(ex, exc, out)
            return
        if out:
            self._out.writelines(out)

    def _release_link(self, ex: _Exchange, *, clean: bool | None = None) -> None:
        """*clean*: whether a fast exchange left the link fit for another request (None:
        h11's states say)."""
        link = ex.link
        assert link is not None
        if ex.link_paused:
            self._pause_link(ex, False)
        ex.link = None
        self.ctx.http.pool.give(link, clean=clean)

    def _pause_link(self, ex: _Exchange, paused: bool) -> None:
        link = ex.link
        if link is None or link.transport is None or ex.link_paused is paused:
            return
        ex.link_paused = paused
        link.transport.pause_reading() if paused else link.transport.resume_reading()

    # Ending a request…

    def _answer(self, status: int, reason: str, headers: Iterable[tuple[str, str]] = (),
                *, close: bool = False) -> None:
        """The proxy's own answer to the request in flight, instead of a backend's."""
        ex = self._ex
        assert ex is not None
        if ex.link is not None:
            ex.link.close(abort=True)  # the request will not complete there
            ex.link = None
        ex.status = status
        if ex.response_started:
            self._abort_client()
            return
        if ex.fast:
            self._to_h11(ex)
        h = self._h11
        assert h is not None
        close = close or self._closing() or h.their_state is not h11.DONE
        response, body = error_answer(status, reason, tuple(headers), close=close)
        try:
            out = h.send(response) or b""
            if ex.head.method != b"HEAD":
                out += h.send(h11.Data(data=body)) or b""
            out += h.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            self._abort_client()
            return
        self._write(out)
        self._finish()

    def _finish(self) -> None:
        """The exchange in flight is over: account for it, then the next request."""
        ex = self._ex
        assert ex is not None
        self._ex = None
        if ex.counted:
            self.ctx.http.exchange_ended(ex)
        now = self.ctx.loop.time()
        self.ctx.metrics.http_request(ex.status, now - ex.started)
        put = direct_put()
        if put is not None or info_enabled():  # the access log line costs ~10 µs to build
            self._log_request(ex, now, put)
        if self._closed:
            return
        h = self._h11
        if h is None:
            again = ex.request_done and ex.head.keep_alive and not ex.close_sent
        elif h.our_state is h11.DONE and h.their_state is h11.DONE:
            again = True
            # The next head is read without h11 again (h11 is made anew if it is not plain).
            buffered, self._eof = h.trailing_data
            self._buffer = bytes(buffered)
            self._h11 = None
        else:
            again = False
        if again and not self._close_after:
            self._arm(_IDLE, self._keepalive)
            if self._pumping:
                pass  # the pump further up the stack reads on
            elif self._h11 is None and not self._buffer and not self._eof:
                # What _pump_client() comes to with nothing read: _update_reading(), which
                # between requests resumes reading, if paused.
                if not self._reading:
                    self._update_reading()
            else:
                self._pump_client()  # a pipelined request may be waiting already
        else:
            self._close_client()

    def _log_request(self, ex: _Exchange, now: float, put: Callable[[str], None] | None
                     ) -> None:
        """*put*: log.direct_put()'s."""
        head = ex.head
        status = ex.status
        config = ex.backend.config if ex.backend else None
        if put is not None:  # the same line, rendered here (wsproxy.log.request_line)
            # Its middle as the last line's, when that was for the same head (a head seen
            # again is the same object: http_heads.read_request()), answer and backend.
            memo = self._log_fields
            if (
                memo is None or memo[0] is not head or memo[1] != status
                or memo[2] is not config or memo[3] is not self.client_ip
            ):
                memo = self._log_fields = (head, status, config, self.client_ip, request_fields(
                    self.client_ip, head.method.decode("latin-1"),
                    head.target.split(b"?", 1)[0].decode("latin-1"), status,
                    None if config is None else config.name,
                ))
            put(request_line_of(ex.request_id, memo[4], now - ex.started, ex.body_in,
                                ex.bytes_out, ex.error))
            return
        method = head.method.decode("latin-1")
        path = head.target.split(b"?", 1)[0].decode("latin-1")
        backend = None if config is None else config.name
        info_line("http.request", {
            "request_id": ex.request_id, "client": self.client_ip, "method": method,
            "path": path, "status": ex.status, "backend": backend,
            "duration_s": round(now - ex.started, 6),
            "bytes_in": ex.body_in, "bytes_out": ex.bytes_out, "error": ex.error,
        })

    def _closing(self) -> bool:
        """Whether the response in flight ends the connection (a drain is on)."""
        return self._close_after or self._unready()

    def _unready(self) -> bool:
        """Not ``ctx.ready`` (a proxy drain is on), asked only while a drain is."""
        return None in self.ctx.http.drains and not self.ctx.ready

    def _refuse(self, status: int, reason: str) -> None:
        """A head h11 cannot or must not parse: an answer, then the end of the connection."""
        log.info("http.refused", conn_id=self.id, client=self.client_ip, status=status,
                 reason=reason)
        self.ctx.metrics.http_request(status, 0.0)
        self._write(error_response(status, reason))
        self._close_client()

    # Closing on the proxy's behalf…

    def close_when_idle(self) -> None:
        """A drain's turn: close now if idle, else after the request in flight."""
        self._close_after = True
        if self._ex is None:
            self._close_client()

    def terminate(self) -> None:
        """The drain's deadline: drop the connection whatever it is doing."""
        if self._ex is not None:
            self._ex.error = self._ex.error or "drain_timeout"
        self._abort_client()

    def drain_exchange(self, ex: _Exchange, error: str) -> None:
        """A drain ends *ex* (its backend's: its point of the spread; any: the deadline), with
        *error* for the log line: the
        backend request is abandoned and the client connection closed, so that a polling
        client reconnects now, to another backend. Nothing was sent yet: a plain close
        (a client may retry as after a keep-alive race); a response begun: a cut."""
        if self._ex is not ex or self._closed:
            return
        ex.error = error  # "drained" at its point, "drain_timeout" at the deadline
        self._close_after = True
        if ex.link is not None:
            ex.link.close(abort=True)
            ex.link = None
        if ex.response_started:
            self._abort_client()
        else:
            self._close_client()

    def _hand_back(self, parsed: ParsedRequest) -> None:
        """An upgrade after plain requests: a fresh Connection takes the socket over."""
        self._closed = True
        self._cancel_timer()
        self.ctx.http.remove(self)
        self._out.flush()  # what is owed to the client first
        self._door.to_websocket(self._transport, parsed, peer_ip=self.peer_ip,
                                settings=self.settings)

    def _close_client(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel_timer()
        # close() waits for the buffer to drain: not for ever.
        self._out.close(self.settings.config.heartbeat.timeout)

    def _abort_client(self) -> None:
        self._closed = True
        self._cancel_timer()
        self._out.abort()

    # I/O helpers…

    def _write(self, data: bytes | None) -> None:
        if data:
            self._out.write(data)

    def _update_reading(self) -> None:
        """Read the client only while its bytes have somewhere to go; once its request
        is whole, on until its answer ends, so that an EOF or a reset is seen (a
        pipelined next request waits in h11's buffer, up to ``max_request_head``)."""
        if self._closed:
            return
        ex = self._ex
        h = self._h11
        if ex is None:
            want = True
        elif not ex.request_done if h is None else h.their_state is h11.SEND_BODY:
            # (_request_open())
            want = ex.link is not None and not ex.upstream_full
        else:
            pending = len(self._buffer) if h is None else len(h.trailing_data[0])
            want = pending < self.settings.config.limits.max_request_head
        if want is not self._reading:
            self._reading = want
            self._transport.resume_reading() if want else self._transport.pause_reading()

    # Timers…

    def _arm(self, kind: str, delay: float) -> None:
        """Time out *kind* in *delay* seconds. The handle of the timer is kept while it
        is due no later than that: a keep-alive request re-arms twice (the exchange,
        then the idle wait), and a new handle for each cost more than the request's
        parsing; a timer that fires before the deadline arms itself again."""
        loop = self.ctx.loop
        self._timer_kind = kind
        now = loop.time()
        at = self._deadline = now + delay
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        at = self._timer_at = min(at, now + self._timer_span)
        self._timer = loop.call_at(at, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_kind = None

    def _check_interval(self) -> float:
        return self._interval

    def _timed_out(self) -> None:
        self._timer = None
        if self._timer_kind is None:
            return  # disarmed meanwhile
        now = self.ctx.loop.time()
        if self._deadline > now + 0.001:  # re-armed for later meanwhile
            # (a millisecond's slack: the loop's clock may lag the timer's by that)
            at = self._timer_at = min(self._deadline, now + self._timer_span)
            self._timer = self.ctx.loop.call_at(at, self._timed_out)
            return
        kind, self._timer_kind = self._timer_kind, None
        if kind == _IDLE:
            self._close_client()
        elif kind == _HEAD:
            self._refuse(408, "request head timeout")
        elif self._ex is not None and self._ex.link is not None:
            self._check_exchange(self._ex)

    def _check_exchange(self, ex: _Exchange) -> None:
        """The exchange timer: a client silent mid-body, a backend silent too long.

        ``http.response_timeout`` bounds the backend's silence until the response head;
        once the head is relayed, ``http.stream_idle_timeout`` bounds each pause of the
        body instead (an event stream may be quiet for long, and is not late).

        Activity only moves timestamps; this compares them with the limits and arms
        itself again for the nearest deadline. Silence the proxy caused itself (a
        full write buffer on the other side) does not count.
        """
        http = self.settings.config.http
        now = self.ctx.loop.time()
        deadlines: list[tuple[float, str]] = []
        sending = self._request_open()
        if sending and not ex.upstream_full:
            deadlines.append((ex.client_at + http.body_timeout, "body"))
        if ex.response_started and not ex.client_full:
            # A body may pause between chunks (server-sent events, long-poll): its own bound.
            deadlines.append((ex.upstream_at + http.stream_idle_timeout, "stream"))
        elif not sending and not ex.client_full:
            deadlines.append((ex.upstream_at + http.response_timeout, "response"))
        at, kind = min(deadlines, default=(now + self._check_interval(), ""))
        if at > now or not kind:
            self._arm(_EXCHANGE, max(at - now, 0.001))
        elif kind == "body":
            ex.error = "body_timeout"
            self._answer(408, "request body timeout", close=True)
        elif kind == "stream":
            ex.error = "stream_idle_timeout"
            self._abort_client()  # the head is out: the client must see a cut, not an end
        else:
            ex.error = "response_timeout"
            self._answer(504, "backend timed out")
