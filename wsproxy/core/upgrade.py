"""The two opening handshakes of one connection, sans I/O (RFC 6455 §4).

A connection opens in two steps: the client's request is read and checked (an h11
server, the proxy's own checks in wsproxy.core.handshake), then each backend tried
gets a handshake of the proxy's own and its answer is checked, until one says 101.
``Upgrade`` holds what those steps need (the parsers, the keys, the bytes that
arrive early) and decides; it never writes to a transport. Its outcome is an
``Opened``: the client's 101 and the bytes that came with the handshakes, which the
relay (wsproxy.core.session) starts from. After that the Upgrade is dropped: an open
connection keeps only its legs.

Why the driver still holds one object
-------------------------------------
``Session`` is the facade a driver talks to from the first byte to the last: it
owns the joint state (wsproxy.core.states) and the legs, and hands the opening's
steps to its Upgrade while the state is AWAIT_REQUEST or CONNECTING_UPSTREAM. Two
objects in the driver (an Upgrade, then a Session) would cost the relay's hot path a
test of which one is current on every read, or a protocol swap per upgrade; with
one object the hot path stays ``session.receive_data`` → ``_scan`` with the state
test it always had, and the driver's calls that span both phases (``state``,
``data_to_send``, ``should_close``, ``abort``) have one receiver.

Reading the request once
------------------------
The request is parsed once, here. A request without Upgrade (``plain_http:
proxy``) is not an error but a ``ParsedRequest`` for the HTTP relay, with the h11
server that read it; the other way, a relay that reads an upgrade on a keep-alive
connection hands its ParsedRequest to a fresh Session (``receive_parsed``).
"""

from __future__ import annotations

from typing import Final, TypeAlias

import h11

from wsproxy.core.handshake import (
    Forwarding,
    Header,
    UpgradeRequest,
    UpstreamAccepted,
    accept_plain,
    accept_response,
    accept_response_of,
    check_upgrade,
    check_upstream_response,
    new_key,
    read_accept,
    read_upgrade,
    upstream_request_bytes,
)
from wsproxy.core.http import ParsedRequest, is_upgrade, probe_path
from wsproxy.core.states import Side
from wsproxy.errors import HandshakeRejected, UpstreamUnavailable

#: What an h11 client connection that reads a backend's answer is told went out: a
#: GET that proposes the upgrade, which is all its state machine takes from a request
#: (the bytes on the wire come from upstream_request_bytes()). One immutable event
#: for every upgrade: building one per upgrade re-validated every header.
_UPGRADE_SENT: Final = h11.Request(
    method="GET", target="/",
    headers=[("Host", "backend"), ("Upgrade", "websocket"), ("Connection", "Upgrade")],
)
#: The usual backend's 101 (no subprotocol, no extension) without an auth offer: one
#: for every connection that opens so, never changed (as no UpstreamAccepted is): one
#: made per upgrade cost ~1k instructions, and ~70 B while its connection is open.
_PLAIN_ACCEPTED: Final = UpstreamAccepted(None, None)
#: What h11's next_event() returns.
_Next = h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]


def proxy_subprotocol(offers: tuple[str, ...], auth_offer: str | None) -> str | None:
    """The subprotocol a 101 of the proxy's own selects (no backend chose one): the
    auth offer when auth took one, else the client's first offer; None without offers.
    A browser fails a handshake whose offers all go unanswered (WHATWG WebSockets:
    "establish a WebSocket connection") and would report 1006 instead of what follows."""
    return auth_offer or (offers[0] if offers else None)


#: A backend said 101: what the relay starts from, (the backend's choices, our 101 to
#: the client, the bytes the client and the backend each sent after its handshake,
#: before the relay was there to read). A plain tuple, one an upgrade: a NamedTuple's
#: __new__ (Python) cost ~2.5k instructions more, a frozen dataclass ~2k a field.
Opened: TypeAlias = tuple[UpstreamAccepted, bytes, bytes, bytes]


class Upgrade:
    """Both opening handshakes: the client's request, then each backend's answer.

    Driven by a Session, which turns the outcomes into states and bytes for the legs:
    ``receive_request()`` until ``request``, ``probe`` or ``plain`` is set; then,
    per backend, ``connect()`` and ``receive_response()`` until it returns an
    ``Opened`` or sets ``upstream_failure``. A refusal is raised as
    HandshakeRejected (the client gets that status instead of a 101).
    """

    __slots__ = (
        "_client_headers", "_early_client", "_early_upstream", "_head_bytes", "_http_client",
        "_http_server", "_key", "_pass_extensions", "_received", "_target", "auth_subprotocol",
        "max_request_head", "plain", "probe", "request", "upstream_failure",
    )

    # (Not keyword-only: see Session.__init__.)
    def __init__(self, max_request_head: int, plain_http: bool) -> None:
        self.max_request_head = max_request_head
        #: The upgrade request once it has arrived and passed the checks.
        self.request: UpgradeRequest | None = None
        #: The path of a plain GET /healthz or /readyz (a kubelet probe), if that is
        #: what arrived instead of an upgrade: the driver answers it with a reject.
        self.probe: str | None = None
        #: With *plain_http*: a request without Upgrade, for the driver to hand to an
        #: HTTP relay with the parser that read it.
        self.plain: ParsedRequest | None = None
        self._received: list[bytes] | None = [] if plain_http else None
        #: The client's auth subprotocol offer ("bearer.<token>"), taken out of what the
        #: backend sees; the 101 selects it when the backend chooses no subprotocol,
        #: since browsers fail a handshake whose offers all go unanswered.
        self.auth_subprotocol: str | None = None
        #: Why the backend being tried failed (dialling or its handshake): try the next.
        self.upstream_failure: str | None = None
        #: Made when the request is not read by read_upgrade() (_server()).
        self._http_server: h11.Connection | None = None
        self._head_bytes = 0
        self._http_client: h11.Connection | None = None
        self._key = b""
        self._target = ""
        self._pass_extensions = False
        #: Headers of the proxy's own for the client's 101 (a sticky cookie).
        self._client_headers: tuple[Header, ...] = ()
        self._early_client = b""
        self._early_upstream = b""

    @property
    def early_client(self) -> bytes:
        """What the client sent after its request, kept until there is a backend."""
        return self._early_client

    @property
    def upstream_key(self) -> bytes:
        """The Sec-WebSocket-Key of the handshake out to the current backend."""
        return self._key

    # The client's request…

    def receive_request(self, data: bytes) -> None:
        """Read the client's bytes until its request is in.

        Raises:
            HandshakeRejected: the client gets this HTTP error instead of a 101.
        """
        if not self._head_bytes and self._read_plain(data):
            return
        self._head_bytes += len(data)
        conn = self._server()
        if self._received is not None:
            self._received.append(data)
        try:
            conn.receive_data(data)
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            self.request = None
            raise HandshakeRejected(exc.error_status_hint, "malformed request") from None
        self._read(conn, event)

    def _read_plain(self, data: bytes) -> bool:
        """The request in its plainest form, read without h11 (read_upgrade());
        False when h11 is to read it.

        Raises:
            HandshakeRejected: as receive_request().
        """
        self._head_bytes = len(data)  # (a refusal below is final: no h11 read follows)
        read = read_upgrade(data, self.max_request_head)
        if read is None:
            self._head_bytes = 0
            return False
        self.request, self._early_client = read
        self._received = None
        return True

    def _server(self) -> h11.Connection:
        if self._http_server is None:
            self._http_server = h11.Connection(
                h11.SERVER, max_incomplete_event_size=self.max_request_head
            )
        return self._http_server

    def receive_parsed(self, parsed: ParsedRequest) -> None:
        """Take a request another driver parsed (an HTTP relay read an upgrade).

        Raises:
            HandshakeRejected: as receive_request().
        """
        self._http_server = parsed.parser
        self._head_bytes = len(parsed.received)
        if self._received is not None:
            self._received.append(parsed.received)
        self._read(parsed.parser, parsed.request)

    def _read(self, conn: h11.Connection, event: _Next) -> None:
        """Take the events of the request, starting with *event*."""
        try:
            while isinstance(event, h11.Request | h11.EndOfMessage):
                if isinstance(event, h11.Request):
                    self.probe = probe_path(event)
                    if self.probe is not None:
                        return
                    if self._received is not None and not is_upgrade(event):
                        self.plain = ParsedRequest(conn, event, b"".join(self._received))
                        return
                    self.request = check_upgrade(event)
                event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            self.request = None
            raise HandshakeRejected(exc.error_status_hint, "malformed request") from None
        if self.request is None:
            if self._head_bytes > self.max_request_head:
                raise HandshakeRejected(431, "request head too large")
            if event is not h11.NEED_DATA:
                raise HandshakeRejected(400, "not a WebSocket upgrade")
            return
        self._received = None
        trailing, _ = conn.trailing_data
        if self._head_bytes - len(trailing) > self.max_request_head:
            self.request = None
            raise HandshakeRejected(431, "request head too large")
        self._early_client = bytes(trailing)

    def keep_early(self, side: Side, data: bytes) -> None:
        """Bytes *side* sent before the relay is there: a client that does not wait
        for our 101 (the driver pauses reading it meanwhile, so this stays small)."""
        if side is Side.CLIENT:
            self._early_client += data
        else:
            self._early_upstream += data

    def own_accept(self) -> tuple[bytes, bytes]:
        """The proxy's own 101 for an upgrade it refuses with a close (no backend is
        asked), and the bytes the client sent early.

        No extension is accepted; the subprotocol is ``proxy_subprotocol()``'s (the
        auth offer, as the 101 after a backend that selects none has it, else the
        first). Nothing is spoken in it: the close follows the 101 at once.
        """
        assert self.request is not None
        chosen = proxy_subprotocol(self.request.subprotocols, self.auth_subprotocol)
        response = accept_response(self.request.key, UpstreamAccepted(chosen, None))
        return response, self._early_client

    # The backend's handshake…

    def connect(
        self, *, target: str, authority: str, path_prefix: str, forwarding: Forwarding,
        pass_extensions: bool, owned_headers: frozenset[bytes],
        client_headers: tuple[Header, ...] = (),
    ) -> bytes:
        """Our handshake request to backend *target*, on a fresh transport;
        *client_headers* go on the client's 101 if this backend accepts.

        Raises:
            h11.LocalProtocolError: a value of the proxy's own is no valid header value.
        """
        assert self.request is not None
        self.upstream_failure = None
        self._target = target
        self._pass_extensions = pass_extensions
        self._client_headers = client_headers
        self._key = new_key()
        request = upstream_request_bytes(
            self.request, authority=authority, path_prefix=path_prefix,
            key=self._key, forwarding=forwarding, pass_extensions=pass_extensions,
            owned=owned_headers,
        )
        self._http_client = None  # created if the answer is not a plain 101
        self._early_upstream = b""
        return request

    def receive_response(self, data: bytes) -> Opened | None:
        """Read the backend's answer; the Opened once it is a valid 101.

        None while the answer is incomplete, or when it failed: then
        ``upstream_failure`` says why, and another backend may be tried.

        Raises:
            UpstreamHandshakeFailed: the backend answered with an HTTP status of its own.
        """
        if not self._key or self.upstream_failure is not None:
            return None  # no handshake of ours is out, or it has failed already
        conn = self._http_client
        if conn is None:  # the first bytes of the answer: most often a whole plain 101
            request = self.request
            assert request is not None
            # The usual 101 (no choices) checked and the client's 101 made in one call.
            plain = accept_plain(data, self._key, request.key, self.auth_subprotocol,
                                 self._client_headers)
            if plain is not None:
                response, rest_at = plain
                offer = self.auth_subprotocol
                accepted = _PLAIN_ACCEPTED if offer is None else UpstreamAccepted(offer, None)
                return accepted, response, self._early_client, data[rest_at:]
            try:
                read = read_accept(
                    data, target=self._target, key=self._key, offered=request.subprotocols,
                    offered_extensions=request.extensions if self._pass_extensions else (),
                )
            except UpstreamUnavailable as exc:
                self.upstream_failure = exc.reason
                return None
            if read is not None:
                return self._opened(*read)
            conn = self._http_client = h11.Connection(h11.CLIENT)
            conn.send(_UPGRADE_SENT)
        try:
            conn.receive_data(data)
            event = conn.next_event()
            while isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                event = conn.next_event()  # 100 Continue and friends: not an answer yet
        except h11.RemoteProtocolError:
            self.upstream_failure = "malformed handshake response"
            return None
        if event is h11.NEED_DATA:
            return None
        if not isinstance(event, h11.InformationalResponse | h11.Response):
            self.upstream_failure = "unexpected handshake response"
            return None
        headers = [(bytes(k), bytes(v)) for k, v in event.headers]
        return self._answered(event.status_code, headers, bytes(conn.trailing_data[0]))

    def _answered(
        self, status: int, headers: list[tuple[bytes, bytes]], rest: bytes
    ) -> Opened | None:
        """The backend's answer, read by h11, is in: *status*, *headers*, and *rest*
        read after it."""
        assert self.request is not None
        try:
            accepted = check_upstream_response(
                status, headers, target=self._target, key=self._key,
                offered=self.request.subprotocols,
                offered_extensions=self.request.extensions if self._pass_extensions else (),
            )
        except UpstreamUnavailable as exc:
            self.upstream_failure = exc.reason
            return None
        return self._opened(accepted.subprotocol, accepted.extensions, accepted.headers, rest)

    def _opened(
        self, subprotocol: str | None, extensions: bytes | None, headers: tuple[Header, ...],
        rest: bytes,
    ) -> Opened:
        """The backend's valid 101 (its choices and the *headers* the client's 101
        repeats), and *rest* read after it: our 101 and what the relay starts from."""
        assert self.request is not None
        if subprotocol is None:
            subprotocol = self.auth_subprotocol
        response = accept_response_of(
            self.request.key, subprotocol, extensions, headers + self._client_headers
        )
        # One UpstreamAccepted, headers not kept (dataclasses.replace() cost ~10k).
        return UpstreamAccepted(subprotocol, extensions), response, self._early_client, rest
