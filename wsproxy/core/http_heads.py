"""Plain HTTP heads read and written without h11, when they are in their plainest form.

h11 on the four heads of a keep-alive request (the client's request in, the backend's
request out, the backend's response in, the client's response out) was most of the
CPU a relayed request cost. The heads most clients and backends send are in one
plain form, which these functions read and write themselves, as h11 would:

- a request: the whole head in one buffer within ``limits.max_request_head``, CRLF
  line ends, ``token SP /target SP HTTP/1.1`` (or 1.0), ``token: value`` lines (the
  line rule of h11 and of the upgrade's fast read, handshake.HEADER_LINE), one Host, at
  most one Content-Length of digits, no Transfer-Encoding, Upgrade or Expect;
- a response: a status of 200 or more, HTTP/1.1 or 1.0, the same lines, a body
  framed by one Content-Length of digits (or none: a HEAD's answer with its
  Content-Length, a 204, a 304), no Transfer-Encoding.

Anything else (a head in pieces, a chunked body, a 1xx, an upgrade, a body read to
the close, obs-folds, bare LFs, two lengths...) returns None and goes to h11 and the
smuggling checks of wsproxy.core.http, whose verdicts stand: the fast path only
ever takes what h11 would have taken, and writes the bytes h11 would have written
(tests/unit/test_http_heads.py compares them on generated heads).

What is read of a header block (a request's, a response's head) is remembered by its
bytes, in bounded caches: a keep-alive client sends the same headers request after
request, a backend the same head answer after answer. What the proxy adds to a
forwarded request (Host, X-Forwarded-*, identity, Via) is made once per client
connection and backend (``forward_template()``) and written around the client's
kept lines (``forward_request_bytes()``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final, TypeVar

import h11

from wsproxy.core.handshake import PROXY_OWNED, Forwarding, check_header_values
from wsproxy.core.http import HOP_BY_HOP, Header, check_own, header_pairs

#: h11's request line (h11/_abnf.py) narrowed to an origin-form target and HTTP/1.x.
_REQUEST_LINE: Final = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+) (/[\x21-\x7e]*) HTTP/(1\.[01])"
)
#: h11's status line, narrowed to HTTP/1.x.
_STATUS_LINE: Final = re.compile(rb"HTTP/(1\.[01]) ([0-9]{3})(?: ((?:[ \t]|[^\x00\s])*))?")
#: Request headers that make a request h11's: a framing it re-frames, or a protocol step.
_NOT_PLAIN_REQUEST: Final = frozenset({b"transfer-encoding", b"upgrade", b"expect"})
#: h11's limit on a response head read in one piece (its max_incomplete_event_size).
_MAX_RESPONSE_HEAD: Final = 16 * 1024
_NO_BODY: Final = frozenset({204, 304})
#: RFC 9110 token characters (h11's ``token``): a name is one when deleting them leaves
#: nothing.
_TOKEN_CHARS: Final = (
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
#: Bytes no head line may hold (h11's field values exclude NUL and ``\s``: a lone CR
#: or LF is caught by counting, space and tab may only come between visible bytes).
_NEVER: Final = b"\x00\x0b\x0c"
K = TypeVar("K")
T = TypeVar("T")


def _fields(block: bytes) -> list[tuple[bytes, bytes]] | None:
    """The (name as sent, value) pairs of a header *block* in its plain form; else None.
    Values are without the spaces and tabs around them.

    The rule is h11's header line (as handshake.HEADER_LINE for the upgrade's fast
    read): ``token ":" OWS value OWS``, the value visible bytes (or obs-text) with
    spaces and tabs only between them; lines end in CRLF. It is checked with bytes
    methods rather than a match per line, which cost a third of a keep-alive request.
    """
    if not block:
        return []
    lines = block.count(b"\r\n") + 1
    if block.count(b"\r") != lines - 1 or block.count(b"\n") != lines - 1 or len(
        block.translate(None, _NEVER)
    ) != len(block):
        return None  # a bare CR or LF (an obs-fold needs a leading blank: below), a NUL...
    fields = []
    for line in block.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon or not name or name.translate(None, _TOKEN_CHARS):
            return None  # no colon, an empty name, a space before the colon, an obs-fold
        fields.append((name, value.strip(b" \t")))
    return fields


def _listed(pairs: list[Header]) -> frozenset[bytes]:
    """The names the Connection headers among *pairs* list (RFC 9110 §7.6.1)."""
    return frozenset(
        t.strip().lower() for name, value in pairs if name == b"connection"
        for t in value.split(b",") if t.strip()
    )


def _wire(pairs: list[Header]) -> tuple[bytes, ...]:
    return tuple([b"%s: %s\r\n" % pair for pair in pairs])


#: What was read of header blocks seen before, by their bytes: a keep-alive client
#: sends the same headers request after request, and backends the same ones answer
#: after answer. Bounded: blocks of at most _MAX_BLOCK bytes, cleared when
#: _MAX_ENTRIES are held (a few MiB at most each, with what is made of them).
_MAX_BLOCK: Final = 4096
_MAX_ENTRIES: Final = 512


#: Not in a cache.
_UNSEEN: Final = object()


def _remember(cache: dict[K, T], key: K, size: int, value: T) -> None:
    """Keep *value* for *key*, a block of *size* bytes (or a key made with one)."""
    if size <= _MAX_BLOCK:
        if len(cache) >= _MAX_ENTRIES:
            cache.clear()
        cache[key] = value


class RequestFields:
    """A plain request's header block, read (_request_fields()) and what its forwarded
    head keeps of it, in h11's wire form (lower-case names)."""

    __slots__ = ("headers", "keep_alive", "kept", "kept_names", "length", "length_line",
                 "vias", "xfh")

    def __init__(self, headers: tuple[Header, ...], host: bytes, length: bytes | None,
                 keep_alive: bool, kept: list[Header], vias: list[Header]) -> None:
        #: (lower-case name, value) pairs, as h11 gives them.
        self.headers = headers
        #: The body's Content-Length (0 without one), and its line to the backend.
        self.length = 0 if length is None else int(length)
        self.length_line = b"" if length is None else b"Content-Length: %s\r\n" % length
        #: Whether an HTTP/1.1 request with these headers keeps the connection.
        self.keep_alive = keep_alive
        #: The lines forward_head() keeps (and their names), and the client's Via lines,
        #: as h11 writes them.
        self.kept = _wire(kept)
        self.kept_names = tuple([name for name, _ in kept])
        self.vias = _wire(vias)
        self.xfh = b"X-Forwarded-Host: %s\r\n" % host


#: read_request()'s readings of header blocks seen before (None: not plain).
_REQUEST_FIELDS: Final[dict[bytes, RequestFields | None]] = {}
#: What forward_head() drops of a request besides the hop-by-hop and the proxy's own.
_DROPPED_REQUEST: Final = frozenset({b"host", b"content-length", b"via"})


def _request_fields(block: bytes) -> RequestFields | None:
    fields = _fields(block)
    if fields is None:
        return None
    headers: list[Header] = []
    hosts = lengths = 0
    length: bytes | None = None
    host = b""
    for raw_name, value in fields:
        name = raw_name.lower()
        if name == b"host":
            hosts += 1
            host = value
        elif name == b"content-length":
            lengths += 1
            length = value
        elif name in _NOT_PLAIN_REQUEST:
            return None
        headers.append((name, value))
    if hosts != 1 or lengths > 1 or (length is not None and not length.isdigit()):
        return None
    dropped = HOP_BY_HOP | PROXY_OWNED | _DROPPED_REQUEST | _listed(headers)
    return RequestFields(
        tuple(headers), host, length, _keep_alive(headers, b"1.1"),
        [p for p in headers if p[0] not in dropped], [p for p in headers if p[0] == b"via"],
    )


class PlainRequest:
    """A client's request head, read by read_request() or taken from h11's event."""

    __slots__ = ("backend_target", "fields", "headers", "http_version", "keep_alive", "length",
                 "method", "target")

    def __init__(self, method: bytes, target: bytes, http_version: bytes,
                 headers: tuple[Header, ...], length: int, keep_alive: bool,
                 fields: RequestFields | None = None) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        #: (lower-case name, value) pairs, as h11 gives them.
        self.headers = headers
        #: The body's Content-Length (0 without one; a chunked body is h11's to count).
        self.length = length
        #: Whether the client may send another request after this one (h11's rule).
        self.keep_alive = keep_alive
        #: Its header block read in the plain form (None: h11 read it).
        self.fields = fields
        #: paths.backend_target() of its target once a relay made it (None: not yet): a
        #: head seen again is the same object (read_request()).
        self.backend_target: bytes | None = None

    @classmethod
    def of(cls, event: h11.Request) -> PlainRequest:
        """The head h11 read (*event*)."""
        headers = tuple(header_pairs(event))
        length = next((v for k, v in headers if k == b"content-length"), b"0")
        version = bytes(event.http_version)
        return cls(bytes(event.method), bytes(event.target), version, headers, int(length),
                   _keep_alive(headers, version))


class ResponseFields:
    """A plain response's header block, read (_response_fields()), and what the
    client's head keeps of it, in h11's wire form."""

    __slots__ = ("headers", "keep_alive", "kept", "length", "vias")

    def __init__(self, headers: list[Header], length: int | None, keep_alive: bool,
                 kept: tuple[bytes, ...], vias: tuple[bytes, ...]) -> None:
        self.headers = headers
        #: Its Content-Length (None: none).
        self.length = length
        self.keep_alive = keep_alive
        #: The lines forward_response_headers() keeps (any Host first, as h11 writes
        #: them), and the backend's Via lines.
        self.kept = kept
        self.vias = vias


def _response_fields(block: bytes) -> ResponseFields | None:
    fields = _fields(block)
    if fields is None:
        return None
    headers: list[Header] = []
    lengths = 0
    length = b""
    for raw_name, value in fields:
        name = raw_name.lower()
        if name == b"content-length":
            lengths += 1
            length = value
        elif name == b"transfer-encoding":
            return None
        headers.append((name, value))
    if lengths > 1 or (lengths and not length.isdigit()):
        return None
    dropped = HOP_BY_HOP | _listed(headers) | {b"via"}
    kept = [p for p in headers if p[0] not in dropped]
    kept = [p for p in kept if p[0] == b"host"] + [p for p in kept if p[0] != b"host"]
    return ResponseFields(headers, int(length) if lengths else None,
                          _keep_alive(headers, b"1.1"), _wire(kept),
                          _wire([p for p in headers if p[0] == b"via"]))


class PlainResponse:
    """A backend's final response head in its plain form (read_response())."""

    __slots__ = ("client_heads", "fields", "headers", "http_version", "keep_alive", "length",
                 "reason", "size", "status")

    def __init__(self, status: int, reason: bytes, http_version: bytes,
                 headers: list[Header], length: int, keep_alive: bool, size: int,
                 fields: ResponseFields | None = None) -> None:
        self.status = status
        self.reason = reason
        self.http_version = http_version
        self.headers = headers
        #: How many body bytes follow the head.
        self.length = length
        #: Whether the backend keeps the connection open after it (h11's rule).
        self.keep_alive = keep_alive
        #: The head's length in bytes.
        self.size = size
        self.fields = fields
        #: forward_response_bytes() without extra headers once made, keeping the
        #: client's connection and closing it (read_response() hands out one object
        #: for a head seen again).
        self.client_heads: list[bytes | None] = [None, None]


def _keep_alive(headers: tuple[Header, ...] | list[Header], http_version: bytes) -> bool:
    """h11's rule (h11/_connection.py): no ``close`` token in Connection, HTTP/1.1."""
    if http_version < b"1.1":
        return False
    for name, value in headers:
        if name == b"connection" and b"close" in (
            t.strip() for t in value.lower().split(b",")
        ):
            return False
    return True


def read_request(data: bytes, max_head: int) -> tuple[PlainRequest, int] | None:
    """The plain request head *data* starts with and its length; None for h11 to read
    it (the module doc says which heads are plain). A head seen before is answered
    from a bounded cache, the same object: a keep-alive client sends the same head
    request after request."""
    global _last_request
    last = _last_request
    if data.startswith(last[0]) and len(last[0]) <= max_head:
        # The last plain head read (with its blank line, whose first one it holds): its
        # answer again, without a slice, a hash and a look-up.
        return last[1]
    end = data.find(b"\r\n\r\n", 0, max_head)  # (_split(), inline: a call less)
    if end < 0 or end + 4 > max_head:
        return None
    head = data[:end] if end + 4 < len(data) else data
    read = _REQUESTS.get(head, _UNSEEN)
    if read is _UNSEEN:
        read = _read_request(data[:end])
        _remember(_REQUESTS, head, end, read)
    if read is None:
        return None
    assert isinstance(read, PlainRequest)
    answer = read, end + 4
    _last_request = (data[: end + 4], answer)
    return answer


#: read_request()'s last plain head, with its blank line, and its answer (at first, a
#: byte no request starts with, and the None read_request() gives such a request).
_last_request: tuple[bytes, tuple[PlainRequest, int] | None] = (b"\0", None)
#: read_request()'s answers to whole heads seen before (None: not plain), by their bytes
#: up to the blank line (or with it: a buffer holding nothing more is its own key).
_REQUESTS: Final[dict[bytes, PlainRequest | None]] = {}


def _read_request(head: bytes) -> PlainRequest | None:
    """read_request() of a whole *head* (without its blank line)."""
    first_end = head.find(b"\r\n")
    if first_end < 0:
        first_end = len(head)
    line = _REQUEST_LINE.fullmatch(head, 0, first_end)
    if line is None:
        return None
    block = head[first_end + 2 :]
    fields = _REQUEST_FIELDS.get(block, _UNSEEN)
    if fields is _UNSEEN:
        fields = _request_fields(block)
        _remember(_REQUEST_FIELDS, block, len(block), fields)
    if fields is None:
        return None
    assert isinstance(fields, RequestFields)
    version = line[3]
    return PlainRequest(line[1], line[2], version, fields.headers, fields.length,
                        fields.keep_alive and version == b"1.1", fields)


#: read_response()'s answer for a head that is whole but h11's to read.
NOT_PLAIN: Final = "not plain"


def read_response(data: bytes, method: bytes) -> PlainResponse | str | None:
    """The plain response head *data* starts with, to a request of *method*.

    Returns:
        The head; None while it is not whole (more bytes may make it plain); or
        ``NOT_PLAIN`` when h11 is to read it. A head seen before (with the same
        method) is answered from a bounded cache, the same object: a backend's
        answers differ mostly in their bodies.
    """
    global _last_response
    last = _last_response
    if method is last[0] and data.startswith(last[1]):
        return last[2]  # the last plain head read (as read_request()'s)
    end = data.find(b"\r\n\r\n", 0, _MAX_RESPONSE_HEAD)
    if end < 0 or end + 4 > _MAX_RESPONSE_HEAD:
        if len(data) >= _MAX_RESPONSE_HEAD or b"\n\n" in data or b"\n\r\n" in data:
            return NOT_PLAIN  # too long, or a blank line h11 reads and we do not
        return None
    key = (method, data[:end])
    read = _RESPONSES.get(key)
    if read is None:
        read = _read_response(key[1], method)
        _remember(_RESPONSES, key, end, read)
    if isinstance(read, PlainResponse):
        _last_response = (method, data[: end + 4], read)
    return read


#: read_response()'s last plain head: the method it answered, the head with its blank
#: line, what was read (the method is compared by identity: a request head seen again
#: is the same object, read_request()).
_last_response: tuple[bytes, bytes, PlainResponse | None] = (b"\0 no method", b"", None)


#: read_response()'s answers to heads seen before, by method and head.
_RESPONSES: Final[dict[tuple[bytes, bytes], PlainResponse | str]] = {}


def _read_response(head: bytes, method: bytes) -> PlainResponse | str:
    """read_response() of a whole *head* (without its blank line)."""
    first_end = head.find(b"\r\n")
    if first_end < 0:
        first_end = len(head)
    line = _STATUS_LINE.fullmatch(head, 0, first_end)
    if line is None:
        return NOT_PLAIN
    status = int(line[2])
    if status < 200:  # a 1xx (or a status h11 refuses): h11's
        return NOT_PLAIN
    fields = _response_fields(head[first_end + 2 :])
    if fields is None:
        return NOT_PLAIN
    length = fields.length
    if method == b"HEAD" or status in _NO_BODY:
        if method == b"HEAD" and length is None:
            return NOT_PLAIN  # h11 would give the client's answer a Transfer-Encoding
        body = 0
    elif length is not None:
        body = length
    else:
        return NOT_PLAIN  # a body read to the close: h11 re-frames it
    version = line[1]
    return PlainResponse(status, line[3] or b"", version, fields.headers, body,
                         fields.keep_alive and version == b"1.1", len(head) + 4, fields)


def request_bytes(method: bytes, target: bytes, headers: list[Header]) -> bytes:
    """A request head as h11 writes it, given *headers* whose only Host comes first
    (core.http.forward_head())."""
    return b"".join([method, b" ", target, b" HTTP/1.1\r\n",
                     *[b"%s: %s\r\n" % pair for pair in headers], b"\r\n"])


def response_bytes(status: int, reason: bytes, headers: list[Header]) -> bytes:
    """A final response head as h11 writes it (HTTP/1.1; any Host header first)."""
    if any(name == b"host" for name, _ in headers):  # h11's write_headers() order
        headers = [p for p in headers if p[0] == b"host"] + [
            p for p in headers if p[0] != b"host"]
    return b"".join([b"HTTP/1.1 %d %s\r\n" % (status, reason),
                     *[b"%s: %s\r\n" % pair for pair in headers], b"\r\n"])




class ForwardTemplate:
    """What a plain request's forwarded head adds to the client's headers, in h11's
    wire form, for one backend (authority, path prefix), client and identity
    (forward_template()): a keep-alive connection's requests share it."""

    __slots__ = ("host", "identity", "owned", "prefix", "proto", "proxy_lines")

    def __init__(self, host: bytes, prefix: bytes, proxy_lines: bytes, identity: bytes,
                 owned: frozenset[bytes], proto: str) -> None:
        #: The Host line, and the path prefix the target is joined to (paths.join()).
        self.host = host
        self.prefix = prefix
        #: X-Forwarded-For and -Proto; the identity's lines.
        self.proxy_lines = proxy_lines
        self.identity = identity
        #: The names the client's headers lose besides those RequestFields.kept lost.
        self.owned = owned
        #: The client's protocol, as X-Forwarded-Proto says it.
        self.proto = proto


def forward_template(authority: str, path_prefix: str, forwarding: Forwarding,
                     owned: frozenset[bytes] = frozenset()) -> ForwardTemplate:
    """forward_head()'s additions for these arguments, checked as forward_head() checks
    them (core.http.check_own(): *forwarding*'s request id too, which stands for every
    request id of its connection: the same connection id, another count).

    Raises:
        h11.LocalProtocolError: a value of the proxy's own is no valid header value.
    """
    check_own(authority, forwarding)
    return ForwardTemplate(
        b"Host: %s\r\n" % authority.encode("latin-1"),
        path_prefix.rstrip("/").encode("latin-1"),  # paths.join()
        b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n" % (
            forwarding.forwarded_for.encode("latin-1"), forwarding.proto.encode("latin-1")),
        b"".join([b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1"))
                  for k, v in forwarding.identity]),
        owned - PROXY_OWNED,
        forwarding.proto,
    )


def forward_request_bytes(head: PlainRequest, fields: RequestFields, target: bytes,
                          template: ForwardTemplate, request_id: bytes) -> bytes:
    """``request_bytes(head.method, *forward_head(...))`` for a request read in the
    plain form (*fields*: its header block, *target*: from paths.backend_target()), to
    the backend and from the client of *template*, with *request_id*."""
    kept = fields.kept
    owned = template.owned
    if owned:
        kept = tuple([line for line, name in zip(kept, fields.kept_names, strict=True)
                      if name not in owned])
    return b"".join([
        head.method, b" ", template.prefix, target, b" HTTP/1.1\r\n", template.host, *kept,
        fields.length_line, template.proxy_lines, fields.xfh, b"X-Request-Id: ", request_id,
        b"\r\n", template.identity, *fields.vias, b"Via: ", head.http_version,
        b" wsproxy\r\n\r\n",
    ])


def forward_response_bytes(read: PlainResponse, fields: ResponseFields, *, close: bool,
                           extra: Sequence[Header] = ()) -> bytes:
    """``response_bytes(read.status, read.reason, forward_response_headers(...))`` for a
    response read in the plain form (*fields*: its header block).

    Raises:
        h11.LocalProtocolError: a header in *extra* is not valid.
    """
    if not extra and fields is read.fields:
        made = read.client_heads[close]
        if made is None:
            made = read.client_heads[close] = _response_head_bytes(read, fields, close, ())
        return made
    check_header_values(extra)
    return _response_head_bytes(read, fields, close, extra)


def _response_head_bytes(read: PlainResponse, fields: ResponseFields, close: bool,
                         extra: Sequence[Header]) -> bytes:
    return b"".join([
        b"HTTP/1.1 %d %s\r\n" % (read.status, read.reason), *fields.kept, *fields.vias,
        b"Via: ", read.http_version, b" wsproxy\r\n",
        *[b"%s: %s\r\n" % pair for pair in extra],
        b"Connection: close\r\n\r\n" if close else b"\r\n",
    ])
