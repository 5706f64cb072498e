"""Plain HTTP requests relayed as they are (``plain_http: proxy``), without I/O.

h11 frames the messages on both legs; this module holds what h11 leaves to a proxy:
the request-smuggling checks it is too lenient for, and the header rewriting of a
hop (RFC 9110 §7.6: hop-by-hop fields out, ``Via`` and the forwarded headers in).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import h11

from wsproxy.core.handshake import (
    PROXY_OWNED,
    Forwarding,
    RequestHead,
    check_header_values,
    check_own_values,
    status_phrase,
)
from wsproxy.core.paths import join

Header = tuple[bytes, bytes]

#: RFC 9110 §7.6.1 and the fields that only ever meant something to one hop.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
    }
)
VIA: Final = b"wsproxy"
_PROBES: Final = frozenset({"/healthz", "/readyz"})
#: Their bytes, for the prefix test that turns away every other target at once.
_PROBE_PREFIXES: Final = tuple(sorted(p.encode("latin-1") for p in _PROBES))


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A request head read off a client connection, handed on with the parser that read it.

    The front door's two drivers pass the first request of a connection (and, on a
    keep-alive connection, a later upgrade) to each other this way, so that it is
    parsed once: *parser* has just returned *request*, and holds what came after it.
    """

    parser: h11.Connection
    request: h11.Request
    #: The bytes the head was read from (and any that came after): the relay checks
    #: them for the smuggling shapes h11 lets through (head_length()).
    received: bytes


class HttpRefused(Exception):
    """A request answered with an error status and the connection closed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def head_length(buffer: bytes | bytearray, max_head: int) -> int | None:
    """Where the request head at the start of *buffer* ends, once it is whole.

    Checks what h11 would let through and a backend might read differently (RFC 9112
    §2.2, §5.2, §6.3; the classic smuggling shapes): a bare LF, obs-fold, more than
    one Content-Length, a Content-Length that is not digits, or both together; and a
    Transfer-Encoding other than one ``chunked`` (501, RFC 9112 §6.1).

    Returns:
        The head's length in bytes, or None while its empty line has not arrived.

    Raises:
        HttpRefused: 400 for a smuggling shape, 501 for a transfer coding other than
            chunked, 431 for a head over *max_head*.
    """
    start = 0
    while buffer.startswith(b"\r\n", start):  # §2.2: empty lines before a request
        start += 2
    end = _blank_line(buffer, start)
    if end is None:
        if len(buffer) - start > max_head:
            raise HttpRefused(431, "request head too large")
        return None
    if end - start > max_head:
        raise HttpRefused(431, "request head too large")
    if buffer[end - 2 : end] == b"\n\n":
        raise HttpRefused(400, "a line ends in a bare LF")  # the empty line itself
    _check_lines(bytes(buffer[start:end]).split(b"\n")[:-2])  # the empty line, and after it
    return end


def _check_lines(lines: list[bytes]) -> None:
    """The request line and header lines of a head, each still ending in its CR."""
    lengths = encodings = 0
    for number, line in enumerate(lines):
        if not line.endswith(b"\r"):
            raise HttpRefused(400, "a line ends in a bare LF")
        if number == 0:
            continue
        if line[:1] in (b" ", b"\t"):
            raise HttpRefused(400, "obsolete line folding")
        name, _, value = line[:-1].partition(b":")
        name = name.lower()
        if name == b"content-length":
            lengths += 1
            if not value.strip(b" \t").isdigit():
                raise HttpRefused(400, "invalid Content-Length")
        elif name == b"transfer-encoding":
            encodings += 1
            if encodings > 1 or value.strip(b" \t").lower() != b"chunked":
                raise HttpRefused(501, "unsupported Transfer-Encoding")  # §6.1, as h11 does
    if lengths > 1:
        raise HttpRefused(400, "more than one Content-Length")
    if lengths and encodings:
        raise HttpRefused(400, "both Content-Length and Transfer-Encoding")


def _blank_line(buffer: bytes | bytearray, start: int) -> int | None:
    """The end of the first empty line at or after *start* (CRLF or a bare LF)."""
    found = [i for i in (buffer.find(b"\n\r\n", start), buffer.find(b"\n\n", start)) if i >= 0]
    if not found:
        return None
    at = min(found)
    return at + (3 if buffer[at + 1 : at + 2] == b"\r" else 2)


def header_pairs(event: h11.Request | h11.Response | h11.InformationalResponse) -> list[Header]:
    """The (lower-case name, value) pairs of an h11 event's headers, as iterating them
    gives, as bytes.

    h11's Headers is a Sequence whose iteration runs collections.abc's generic
    ``__iter__`` (a Python ``__getitem__`` call per header): reading its list of
    (raw name, name, value) directly costs a fifth of that. The list is h11's private
    attribute, so its absence (another h11) falls back to iterating.
    """
    items = getattr(event.headers, "_full_items", None)
    if items is None:  # pragma: no cover - an h11 without it
        return [(bytes(n), bytes(v)) for n, v in event.headers]
    return [(bytes(name), bytes(value)) for _, name, value in items]


def is_upgrade(request: h11.Request) -> bool:
    """Whether *request* asks to switch protocols (then it is the WebSocket side's)."""
    return any(name == b"upgrade" for name, _ in header_pairs(request))


def probe_path(request: h11.Request) -> str | None:
    """The path of a plain GET /healthz or /readyz (the proxy's own probes), or None."""
    if is_upgrade(request):
        return None
    return probe_target(request.method, bytes(request.target))


def probe_target(method: bytes, target: bytes) -> str | None:
    """probe_path() of a request without Upgrade, by its *method* and *target*."""
    if method != b"GET" or not target.startswith(_PROBE_PREFIXES):
        return None
    path = target.split(b"?", 1)[0].decode("latin-1")
    return path if path in _PROBES else None


def plain_request(
    method: bytes, *, target: bytes, headers: tuple[Header, ...]
) -> RequestHead:
    """What auth and balancing read of a plain request: its *method*, its *target* made safe
    (paths.backend_target()) and its *headers* as bytes."""
    host = next((v for k, v in headers if k == b"host"), b"")
    origin = next((v for k, v in headers if k == b"origin"), None)
    return RequestHead(
        method=method, target=target, host=host,
        origin=origin.decode("latin-1") if origin is not None else None, headers=headers,
    )


def _hop_by_hop(headers: Sequence[Header]) -> set[bytes]:
    """The hop-by-hop names, with those the Connection header lists (§7.6.1)."""
    names = set(HOP_BY_HOP)
    for name, value in headers:
        if name == b"connection":
            names.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return names


def _via(headers: Iterable[Header], http_version: bytes) -> list[Header]:
    """The received Via values, then ours (§7.6.3: appended, with the received protocol)."""
    return [*((n, v) for n, v in headers if n == b"via"), (b"Via", http_version + b" " + VIA)]


def forward_request(
    request: h11.Request,
    *,
    target: bytes,
    headers: Sequence[Header],
    authority: str,
    path_prefix: str,
    forwarding: Forwarding,
    owned: frozenset[bytes] = frozenset(),
) -> h11.Request:
    """The request to send to a backend for the client's *request* (forward_head()).

    The client's headers passed h11's checks when it read them: only the proxy's own
    values are checked again (check_own_values()), and the event is built without
    h11's regular expression per header (``_parsed=True``), a tenth of a request's CPU.
    h11 still checks the method, the target, Host and the framing headers.

    Raises:
        h11.LocalProtocolError: a value of the proxy's own is no valid header value.
    """
    out_target, out = forward_head(
        request.http_version, target=target, headers=headers, authority=authority,
        path_prefix=path_prefix, forwarding=forwarding, owned=owned,
    )
    return h11.Request(method=request.method, target=out_target, headers=out, _parsed=True)


def forward_head(
    http_version: bytes,
    *,
    target: bytes,
    headers: Sequence[Header],
    authority: str,
    path_prefix: str,
    forwarding: Forwarding,
    owned: frozenset[bytes] = frozenset(),
) -> tuple[bytes, list[Header]]:
    """The target and headers of the request to a backend for a client's request of
    *http_version*, Host first (and the only Host, as h11 writes it).

    *target* (from paths.backend_target()) and *headers* are the client's, with any
    credentials taken out. The body's framing stays the client's: a Content-Length
    goes on, a chunked body is sent chunked.

    Raises:
        h11.LocalProtocolError: a value of the proxy's own is no valid header value.
    """
    check_own(authority, forwarding)
    dropped = _hop_by_hop(headers) | PROXY_OWNED | owned | {b"host", b"content-length", b"via"}
    out: list[Header] = [(b"Host", authority.encode("latin-1"))]
    out += [(n, v) for n, v in headers if n not in dropped]
    length = next((v for n, v in headers if n == b"content-length"), None)
    if length is not None:
        out.append((b"Content-Length", length.strip()))
    elif any(n == b"transfer-encoding" for n, _ in headers):
        out.append((b"Transfer-Encoding", b"chunked"))
    out += [
        (b"X-Forwarded-For", forwarding.forwarded_for.encode("latin-1")),
        (b"X-Forwarded-Proto", forwarding.proto.encode("latin-1")),
    ]
    host = next((v for n, v in headers if n == b"host"), None)
    if host is not None:  # an HTTP/1.0 request may come without
        out.append((b"X-Forwarded-Host", host))
    out.append((b"X-Request-Id", forwarding.request_id.encode("latin-1")))
    out += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in forwarding.identity]
    out += _via(headers, http_version)
    return join(path_prefix, target), out


#: The proxy's own values checked already (check_own_values()), but for the request id:
#: a keep-alive client's requests all carry the same ones. Bounded: cleared when full.
_CHECKED_OWN: set[tuple[str, str, str, tuple[tuple[str, str], ...]]] = set()
_CHECKED_OWN_MAX: Final = 1024


def check_own(authority: str, forwarding: Forwarding) -> None:
    """check_own_values(), remembering the values that passed (its regular expressions
    cost as much as reading the request head)."""
    key = (authority, forwarding.forwarded_for, forwarding.proto, forwarding.identity)
    request_id = forwarding.request_id.encode("latin-1")
    if key in _CHECKED_OWN and request_id.strip(b" \t") == request_id and len(
        request_id.translate(None, b"\x00\r\n\x0b\x0c")
    ) == len(request_id):  # handshake's _FIELD_VALUE, in bytes methods
        return
    check_own_values(authority, forwarding)
    if len(_CHECKED_OWN) >= _CHECKED_OWN_MAX:
        _CHECKED_OWN.clear()
    _CHECKED_OWN.add(key)


def forward_response(
    response: h11.Response | h11.InformationalResponse, *, close: bool,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> h11.Response | h11.InformationalResponse:
    """A backend's *response* as the client gets it (forward_response_headers()).

    As forward_request(): the backend's headers passed h11's checks when it read
    them, *extra* is checked here, and the event skips h11's per-header checks.

    Raises:
        h11.LocalProtocolError: a header in *extra* is not valid.
    """
    informational = isinstance(response, h11.InformationalResponse)
    out = forward_response_headers(
        header_pairs(response), response.http_version, informational=informational,
        close=close, extra=extra,
    )
    if informational:  # a 1xx never ends a connection
        return h11.InformationalResponse(status_code=response.status_code, headers=out,
                                         reason=response.reason, _parsed=True)
    return h11.Response(status_code=response.status_code, headers=out, reason=response.reason,
                        _parsed=True)


def forward_response_headers(
    headers: Sequence[Header], http_version: bytes, *, informational: bool = False,
    close: bool, extra: Sequence[tuple[bytes, bytes]] = (),
) -> list[Header]:
    """The headers of a backend's response of *http_version* as the client gets them:
    hop-by-hop fields out, Via in; *close* ends the client's keep-alive; *extra*:
    headers of the proxy's own for a final response (a sticky cookie). A 1xx
    (*informational*) gets neither.

    Raises:
        h11.LocalProtocolError: a header in *extra* is not valid.
    """
    dropped = _hop_by_hop(headers) | {b"via"}
    out = [(n, v) for n, v in headers if n not in dropped]
    out += _via(headers, http_version)
    if informational:
        return out
    if extra:
        check_header_values(extra)
        out += extra
    if close:
        out.append((b"Connection", b"close"))
    return out


def error_answer(status: int, reason: str, headers: Sequence[tuple[str, str]] = (),
                 *, close: bool) -> tuple[h11.Response, bytes]:
    """The proxy's own answer to a plain request: a status and a one-line reason."""
    body = (reason + "\n").encode("utf-8")
    out = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
           *headers]
    if close:
        out.append(("Connection", "close"))
    phrase = status_phrase(status).encode("latin-1")
    return h11.Response(status_code=status, headers=out, reason=phrase), body

