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
"""

from __future__ import annotations

import re
from typing import Final

import h11

from wsproxy.core.http import Header, header_pairs

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


def _split(data: bytes, max_head: int) -> tuple[bytes, list[tuple[bytes, bytes]], int] | None:
    """The first line, the (name, value) pairs and the length of the head *data* starts
    with, in its plain form; else None. Names are as sent, values without the spaces
    and tabs around them.

    The rule is h11's header line (as handshake.HEADER_LINE for the upgrade's fast
    read): ``token ":" OWS value OWS``, the value visible bytes (or obs-text) with
    spaces and tabs only between them; lines end in CRLF, the head is whole within
    *max_head* bytes. It is checked with bytes methods rather than a match per line,
    which cost a third of a keep-alive request here.
    """
    end = data.find(b"\r\n\r\n", 0, max_head)
    if end < 0 or end + 4 > max_head:
        return None
    head = data[:end]
    lines = head.count(b"\r\n")
    if head.count(b"\r") != lines or head.count(b"\n") != lines or len(
        head.translate(None, _NEVER)
    ) != len(head):
        return None  # a bare CR or LF (an obs-fold needs a leading blank: below), a NUL...
    first, *rest = head.split(b"\r\n")
    fields = []
    for line in rest:
        name, colon, value = line.partition(b":")
        if not colon or not name or name.translate(None, _TOKEN_CHARS):
            return None  # no colon, an empty name, a space before the colon, an obs-fold
        fields.append((name, value.strip(b" \t")))
    return first, fields, end + 4


class PlainRequest:
    """A client's request head, read by read_request() or taken from h11's event."""

    __slots__ = ("headers", "http_version", "keep_alive", "length", "method", "target")

    def __init__(self, method: bytes, target: bytes, http_version: bytes,
                 headers: tuple[Header, ...], length: int, keep_alive: bool) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        #: (lower-case name, value) pairs, as h11 gives them.
        self.headers = headers
        #: The body's Content-Length (0 without one; a chunked body is h11's to count).
        self.length = length
        #: Whether the client may send another request after this one (h11's rule).
        self.keep_alive = keep_alive

    @classmethod
    def of(cls, event: h11.Request) -> PlainRequest:
        """The head h11 read (*event*)."""
        headers = tuple(header_pairs(event))
        length = next((v for k, v in headers if k == b"content-length"), b"0")
        version = bytes(event.http_version)
        return cls(bytes(event.method), bytes(event.target), version, headers, int(length),
                   _keep_alive(headers, version))


class PlainResponse:
    """A backend's final response head in its plain form (read_response())."""

    __slots__ = ("headers", "http_version", "keep_alive", "length", "reason", "size", "status")

    def __init__(self, status: int, reason: bytes, http_version: bytes,
                 headers: list[Header], length: int, keep_alive: bool, size: int) -> None:
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
    it (the module doc says which heads are plain)."""
    plain = _split(data, max_head)
    if plain is None:
        return None
    first, fields, size = plain
    line = _REQUEST_LINE.fullmatch(first)
    if line is None:
        return None
    headers: list[Header] = []
    hosts = lengths = 0
    length = b"0"
    for raw_name, value in fields:
        name = raw_name.lower()
        if name == b"host":
            hosts += 1
        elif name == b"content-length":
            lengths += 1
            length = value
        elif name in _NOT_PLAIN_REQUEST:
            return None
        headers.append((name, value))
    if hosts != 1 or lengths > 1 or not length.isdigit():
        return None
    version = line[3]
    return PlainRequest(line[1], line[2], version, tuple(headers), int(length),
                        _keep_alive(headers, version)), size


#: read_response()'s answer for a head that is whole but h11's to read.
NOT_PLAIN: Final = "not plain"


def read_response(data: bytes, method: bytes) -> PlainResponse | str | None:
    """The plain response head *data* starts with, to a request of *method*.

    Returns:
        The head; None while it is not whole (more bytes may make it plain); or
        ``NOT_PLAIN`` when h11 is to read it.
    """
    if data.find(b"\r\n\r\n", 0, _MAX_RESPONSE_HEAD) < 0:
        if len(data) >= _MAX_RESPONSE_HEAD or b"\n\n" in data or b"\n\r\n" in data:
            return NOT_PLAIN  # too long, or a blank line h11 reads and we do not
        return None
    plain = _split(data, _MAX_RESPONSE_HEAD)
    if plain is None:
        return NOT_PLAIN
    first, fields, size = plain
    line = _STATUS_LINE.fullmatch(first)
    if line is None:
        return NOT_PLAIN
    status = int(line[2])
    if status < 200:  # a 1xx (or a status h11 refuses): h11's
        return NOT_PLAIN
    headers: list[Header] = []
    lengths = 0
    length = b""
    for raw_name, value in fields:
        name = raw_name.lower()
        if name == b"content-length":
            lengths += 1
            length = value
        elif name == b"transfer-encoding":
            return NOT_PLAIN
        headers.append((name, value))
    if lengths > 1 or (lengths and not length.isdigit()):
        return NOT_PLAIN
    if method == b"HEAD" or status in _NO_BODY:
        if method == b"HEAD" and not lengths:
            return NOT_PLAIN  # h11 would give the client's answer a Transfer-Encoding
        body = 0
    elif lengths:
        body = int(length)
    else:
        return NOT_PLAIN  # a body read to the close: h11 re-frames it
    version = line[1]
    return PlainResponse(status, line[3] or b"", version, headers, body,
                         _keep_alive(headers, version), size)


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
