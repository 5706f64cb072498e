"""The two opening handshakes, as pure functions (RFC 6455 §4).

The client's upgrade is checked here and answered with an HTTP error or, once the
backend has said 101, with our own 101. The backend gets a handshake of its own (a
fresh key; the client's path, query, subprotocol and extension offers; the forwarding
headers), so that both legs are valid WebSocket connections in their own right.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from binascii import a2b_base64, b2a_base64
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import ModuleType
from typing import Final

import h11

from wsproxy.core.nonces import random_bytes
from wsproxy.core.paths import UnsafeTarget, backend_target, join
from wsproxy.errors import HandshakeRejected, UpstreamHandshakeFailed, UpstreamUnavailable

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: RFC 9110 §5.6.2 token.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: h11's rules (h11/_abnf.py) for a header value and a request target.
_FIELD_VALUE: Final = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
_TARGET: Final = re.compile(rb"[\x21-\x7e]+")
#: A backend's 101 in its plainest form, which read_accept() reads itself.
_SWITCHING_LINE: Final = re.compile(rb"HTTP/1\.1 101(?: [\x20-\x7e]*)?")
_HEADER_LINE: Final = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?)[ \t]*"
)
#: An HTTP/1.1 request line as h11 reads it (h11/_abnf.py: token, vchar+).
_REQUEST_LINE: Final = re.compile(rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+) ([\x21-\x7e]+) HTTP/1\.1")
#: Headers whose values h11 checks beyond the syntax: such a 101 goes to h11.
_CHECKED_BY_H11: Final = frozenset({b"content-length", b"transfer-encoding"})
#: h11's limit on a head (max_incomplete_event_size): a longer one goes to h11.
_MAX_PLAIN_HEAD: Final = 16 * 1024
#: Header lines read before, and what _HEADER_LINE made of them (the lower-cased name,
#: the value): the same bytes get the same verdict, and most lines of a request or a
#: backend's 101 repeat from one upgrade to the next (a look-up costs a fifth of the
#: match). Bounded: lines up to _CACHED_LINE bytes, emptied when _CACHED_LINES are held.
_LINES: Final[dict[bytes, tuple[bytes, bytes]]] = {}
_CACHED_LINE: Final = 256
_CACHED_LINES: Final = 2048

Header = tuple[bytes, bytes]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Hop-by-hop headers (RFC 9110 §7.6.1) and the ones each leg's handshake owns.
_NOT_FORWARDED: Final = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
        b"content-length", b"host", b"sec-websocket-key", b"sec-websocket-version",
        b"sec-websocket-accept", b"sec-websocket-protocol", b"sec-websocket-extensions",
    }
)
#: Headers the proxy sets itself: a client's copy would be a spoof.
PROXY_OWNED: Final = frozenset(
    {
        b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip",
        b"forwarded", b"x-request-id", b"x-auth-subject",
    }
)


# Not frozen: a frozen dataclass sets each field through object.__setattr__ (~2k
# instructions a field, ~17k an UpgradeRequest); these are built once per request
# and never changed in place by convention (dataclasses.replace() makes a new one).
@dataclass(slots=True, kw_only=True)
class RequestHead:
    """What auth and balancing read of a client's request, an upgrade or a plain one."""

    method: bytes = b"GET"
    target: bytes
    host: bytes
    origin: str | None
    headers: tuple[Header, ...]
    #: The subprotocol offers an upgrade negotiates; a plain request has none.
    subprotocols: tuple[str, ...] = ()

    def header(self, name: bytes) -> bytes | None:
        """The first value of header *name* (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_list(self, name: bytes) -> list[bytes]:
        """Every comma-separated token of every header *name*, lower case."""
        return [t for key, value in self.headers if key == name for t in _tokens(value)]


@dataclass(slots=True, kw_only=True)
class UpgradeRequest(RequestHead):
    """A client's upgrade request that passed the RFC 6455 checks."""

    key: bytes
    extensions: tuple[bytes, ...]
    #: The ``headers`` whose one Connection header says just "Upgrade", when
    #: read_upgrade() saw so (else None): while ``headers`` is still that very tuple,
    #: no other header is hop-by-hop (_connection_listed() need not look). Not part of
    #: the request's value: two requests alike are equal whichever way they were read.
    plain_connection: tuple[Header, ...] | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class Forwarding:
    """What the backend is told about the client (the X-Forwarded-* family)."""

    client_ip: str
    forwarded_for: str
    proto: str
    request_id: str
    identity: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class UpstreamAccepted:
    """A backend's valid 101: what the client's own 101 must repeat."""

    subprotocol: str | None
    extensions: bytes | None
    headers: tuple[Header, ...] = field(default=())


def _tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


# base64's functions in the C functions they call (b64encode, b64decode(validate=True)
# of bytes): a Python frame less each, three or four an upgrade.


def py_accept_key(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for *key* (§4.2.2): the readable reference, and the
    fallback, of ``_heads.accept_key`` (C: a fifth of the instructions, two an upgrade)."""
    return b2a_base64(_sha1(key + GUID).digest(), newline=False)


accept_key = py_accept_key  # (the C twin where it was built: _pick_scanners())


def new_key() -> bytes:
    """A fresh Sec-WebSocket-Key for our own handshake with a backend (16 bytes of the
    kernel's CSPRNG, from a batch: wsproxy.core.nonces)."""
    return b2a_base64(random_bytes(16), newline=False)


def _key_is_valid(key: bytes) -> bool:
    try:
        return len(a2b_base64(key, strict_mode=True)) == 16
    except ValueError:
        return False


def _is_base64(value: bytes) -> bool:
    """Whether *value* is non-empty strict base64 (no whitespace, no NUL)."""
    try:
        return bool(a2b_base64(value, strict_mode=True))
    except ValueError:
        return False


try:  # CPython's own SHA-1: ~1.5k instructions less a digest than OpenSSL's (two an upgrade)
    from _sha1 import sha1 as _sha1  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover (an interpreter built without it)
    _sha1 = hashlib.sha1


def check_upgrade(request: h11.Request) -> UpgradeRequest:
    """Check a client's request against §4.2.1 (check_upgrade_head() of its parts).

    Raises:
        HandshakeRejected: as check_upgrade_head().
    """
    return check_upgrade_head(
        request.method, bytes(request.target), request.http_version,
        tuple((bytes(k), bytes(v)) for k, v in request.headers),
    )


def check_upgrade_head(
    method: bytes, raw_target: bytes, http_version: bytes, headers: tuple[Header, ...]
) -> UpgradeRequest:
    """Check a client's request, as h11 (or read_upgrade()) read it, against
    §4.2.1: *headers* with their names in lower case and their values stripped.

    Raises:
        HandshakeRejected: 400 for a request that is no valid upgrade, 426 (with
            ``Sec-WebSocket-Version: 13``) for another protocol version.
    """
    values: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        found = values.get(name)
        if found is None:
            values[name] = [value]
        else:
            found.append(value)

    # The usual one-word values are compared whole before they are split into tokens.
    upgrade = _joined(values, b"upgrade")
    if upgrade.lower() != b"websocket" and b"websocket" not in _tokens(upgrade):
        raise HandshakeRejected(400, "not a WebSocket upgrade")
    if method != b"GET" or http_version != b"1.1":
        raise HandshakeRejected(400, "a WebSocket upgrade is an HTTP/1.1 GET")
    connection = _joined(values, b"connection")
    if connection.lower() != b"upgrade" and b"upgrade" not in _tokens(connection):
        raise HandshakeRejected(400, "Connection header lacks 'upgrade'")
    try:
        target = backend_target(raw_target)
    except UnsafeTarget as exc:
        raise HandshakeRejected(400, str(exc)) from None
    # h11 has checked that a Content-Length is digits.
    if b"transfer-encoding" in values or (
        b"content-length" in values and any(int(v) for v in values[b"content-length"])
    ):
        # RFC 6455 §4.1: the upgrade is a GET without a body. Body bytes would be read
        # as frames, depending on how TCP cut them (RFC 9112 §6.1: refuse).
        raise HandshakeRejected(400, "an upgrade request has no body")
    if values.get(b"sec-websocket-version") != [b"13"]:
        raise HandshakeRejected(
            426, "unsupported WebSocket version", [("Sec-WebSocket-Version", "13")]
        )
    keys = values.get(b"sec-websocket-key", [])
    if len(keys) != 1 or not _key_is_valid(keys[0].strip()):
        raise HandshakeRejected(400, "missing or invalid Sec-WebSocket-Key")
    # Subprotocol names are case-sensitive: split without lower-casing.
    subprotocols: tuple[str, ...] = ()
    if b"sec-websocket-protocol" in values:
        subprotocols = _offers(_joined(values, b"sec-websocket-protocol"))
        if not all(_TOKEN.fullmatch(p) for p in subprotocols):
            # RFC 6455 §4.1: each offer is an HTTP token (ASCII), so it reaches the
            # backend byte for byte.
            raise HandshakeRejected(400, "a subprotocol offer is not a token")
    origin = values.get(b"origin")
    extensions = values.get(b"sec-websocket-extensions")
    return UpgradeRequest(
        target=target,
        host=_joined(values, b"host"),
        key=keys[0].strip(),
        subprotocols=subprotocols,
        extensions=() if extensions is None else tuple(extensions),
        origin=origin[0].decode("latin-1") if origin else None,
        headers=headers,
    )


def _joined(values: dict[bytes, list[bytes]], name: bytes) -> bytes:
    """Every value of header *name*, comma-separated (b"" when it is absent)."""
    found = values.get(name)
    return b"" if found is None else found[0] if len(found) == 1 else b", ".join(found)


def client_address(
    peer_ip: str, forwarded_for: bytes | None, trusted: Sequence[IPNetwork]
) -> tuple[str, str]:
    """(the client's address, the X-Forwarded-For chain to send on).

    A peer inside *trusted* is a proxy of ours: its X-Forwarded-For is believed, and
    the client is the right-most address in the chain that is not a trusted proxy.
    Anyone else's X-Forwarded-For is a spoof and is replaced.
    """
    if not forwarded_for or not _in_networks(peer_ip, trusted):
        return peer_ip, peer_ip
    chain = [a.strip() for a in forwarded_for.decode("latin-1").split(",") if a.strip()]
    client = peer_ip
    for address in reversed(chain):
        client = address
        if not _in_networks(address, trusted):
            break
    return client, ", ".join([*chain, peer_ip])


def plain_ip(ip: str) -> str:
    """*ip* as the limits, the logs and X-Forwarded-For name it: an IPv4-mapped IPv6
    address (a dual-stack listener's IPv4 client, a PROXY header) is the IPv4
    address it maps, so that one client has one address for the per-IP limits."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _in_networks(address: str, networks: Iterable[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def upstream_request(
    upgrade: UpgradeRequest,
    *,
    authority: str,
    path_prefix: str,
    key: bytes,
    forwarding: Forwarding,
    pass_extensions: bool,
    owned: frozenset[bytes] = frozenset(),
) -> h11.Request:
    """The backend's own handshake request for a client's *upgrade*, as an h11 event.

    *owned* names (lower case) more headers the proxy sets itself, such as the
    identity headers of the auth in use: the client's copies are dropped.
    """
    target, headers = _upstream_head(
        upgrade, authority=authority, path_prefix=path_prefix, key=key,
        forwarding=forwarding, pass_extensions=pass_extensions, owned=owned,
    )
    return h11.Request(method="GET", target=target, headers=headers)


def upstream_request_bytes(
    upgrade: UpgradeRequest,
    *,
    authority: str,
    path_prefix: str,
    key: bytes,
    forwarding: Forwarding,
    pass_extensions: bool,
    owned: frozenset[bytes] = frozenset(),
) -> bytes:
    """upstream_request() as the bytes h11 would write for it, formatted directly.

    Building an h11 event validates every header again, with a regular expression
    each: a third of the CPU an upgrade spent in h11. The client's headers were
    validated when h11 parsed them; only what the proxy adds (its own values, the
    configured path prefix) is checked here, for what h11 would refuse.

    Raises:
        h11.LocalProtocolError: a value of the proxy's own is no valid header value
            (as building the h11 event would have).
    """
    # _upstream_head()'s lines, written as they are made (a list of pairs first cost
    # a third more); test_handshake compares the two. The lines of the config's values
    # (the backend's authority, the listener's proto) come made and checked once
    # (_own_lines()); test_upstream_bytes holds this to the way it was before them.
    target = join(path_prefix, upgrade.target)
    listed = _connection_listed(upgrade)
    host_lines, authority_ok = _own_lines(_HOST_LINES, authority, _AROUND_HOST)
    # One set to test each header against: the usual one, or one made for this request.
    skipped = _SKIPPED if listed is _ONLY_UPGRADE and not owned else _SKIPPED | listed | owned
    extensions = upgrade.extensions if pass_extensions else ()
    identity = forwarding.identity
    # The usual request: one call (request_head()). (An ASCII X-Forwarded-For encodes,
    # so the proto's lines may be made before it: a refusal is the same either way.)
    if authority_ok and not identity and forwarding.forwarded_for.isascii():
        proto_lines, proto_ok = _own_lines(_PROTO_LINES, forwarding.proto, _AROUND_PROTO)
        if proto_ok:
            made = request_head(
                target, host_lines, key, upgrade.subprotocols, extensions, upgrade.headers,
                skipped, forwarding.forwarded_for, proto_lines, upgrade.host,
                forwarding.request_id,
            )
            if made is not None:
                return made
    parts = _head_start(target, host_lines, key, upgrade.subprotocols, extensions,
                        upgrade.headers, skipped)
    forwarded_for = forwarding.forwarded_for
    request_id = forwarding.request_id
    forwarded_for_bytes = forwarded_for.encode("latin-1")  # (encoded in the lines' order)
    proto_lines, proto_ok = _own_lines(_PROTO_LINES, forwarding.proto, _AROUND_PROTO)
    parts += (
        b"\r\nX-Forwarded-For: ", forwarded_for_bytes, proto_lines, upgrade.host,
        b"\r\nX-Request-Id: ", request_id.encode("latin-1"),
    )
    for name_text, value_text in identity:
        parts += (b"\r\n", name_text.encode("latin-1"), b": ", value_text.encode("latin-1"))
    parts.append(b"\r\n\r\n")
    if not _TARGET.fullmatch(target):
        raise h11.LocalProtocolError("illegal request target")
    if identity or not (
        authority_ok and proto_ok and _plain_value(forwarded_for) and _plain_value(request_id)
    ):
        check_own_values(authority, forwarding)  # the whole check, as it raises
    return b"".join(parts)


def py_request_head(
    target: bytes, host_lines: bytes, key: bytes, subprotocols: tuple[str, ...],
    extensions: tuple[bytes, ...], headers: tuple[Header, ...],
    skipped: frozenset[bytes] | set[bytes], forwarded_for: str, proto_lines: bytes,
    host: bytes, request_id: str,
) -> bytes | None:
    """upstream_request_bytes()'s request without identity headers, of its parts
    (*host_lines* and *proto_lines*: _own_lines()'s, *extensions*: those passed on,
    *skipped*: the client's headers not forwarded), in one call; None when the target,
    *forwarded_for* or *request_id* needs the whole check (upstream_request_bytes()
    makes it then, and raises what it raises).

    The readable reference, and the fallback, of ``_heads.request_head`` (C):
    tests/unit/test_heads_twins.py holds the two to the same answers.
    """
    if not _TARGET.fullmatch(target) or not (
        _plain_value(forwarded_for) and _plain_value(request_id)
    ):
        return None
    parts = _head_start(target, host_lines, key, subprotocols, extensions, headers, skipped)
    parts += (
        b"\r\nX-Forwarded-For: ", forwarded_for.encode(), proto_lines, host,
        b"\r\nX-Request-Id: ", request_id.encode(), b"\r\n\r\n",
    )
    return b"".join(parts)


def _head_start(
    target: bytes, host_lines: bytes, key: bytes, subprotocols: tuple[str, ...],
    extensions: tuple[bytes, ...], headers: tuple[Header, ...],
    skipped: frozenset[bytes] | set[bytes],
) -> list[bytes]:
    """The backend's request up to the proxy's forwarding headers: the request line,
    Host (*host_lines*), the key, version, offers, extensions passed on and the
    client's headers not *skipped* (both of upstream_request_bytes()'s ways)."""
    parts = [b"GET ", target, host_lines, key, b"\r\nSec-WebSocket-Version: 13"]
    if subprotocols:
        parts += (b"\r\nSec-WebSocket-Protocol: ", ", ".join(subprotocols).encode())
    for value in extensions:
        parts += (b"\r\nSec-WebSocket-Extensions: ", value)
    for name, value in headers:
        if name not in skipped:
            parts += (b"\r\n", name, b": ", value)
    return parts


def _plain_value(value: str) -> bool:
    """Printable ASCII without spaces (an address, a hex id): a valid header value
    (_FIELD_VALUE), told by three C calls instead of the regular expression."""
    return value.isascii() and value.isprintable() and " " not in value


#: The lines of upstream_request_bytes() around a value of the config's (a backend's
#: authority, the listener's X-Forwarded-Proto), made once per value with whether it
#: is a valid header value: (the lines, valid). Bounded: emptied at _CACHED_VALUES.
_HOST_LINES: Final[dict[str, tuple[bytes, bool]]] = {}
_PROTO_LINES: Final[dict[str, tuple[bytes, bool]]] = {}
_CACHED_VALUES: Final = 1024
#: What goes before and after each kind of value in the request.
_AROUND_HOST: Final = (
    b" HTTP/1.1\r\nHost: ",
    b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ",
)
_AROUND_PROTO: Final = (b"\r\nX-Forwarded-Proto: ", b"\r\nX-Forwarded-Host: ")


def _own_lines(
    lines: dict[str, tuple[bytes, bool]], value: str, around: tuple[bytes, bytes]
) -> tuple[bytes, bool]:
    """*value*'s lines in *lines* (_HOST_LINES or _PROTO_LINES), between the two of
    *around*, made if new.

    Raises:
        UnicodeEncodeError: *value* is not Latin-1 (as its encode() did in place).
    """
    made = lines.get(value)
    if made is None:
        before, after = around
        encoded = value.encode("latin-1")
        made = before + encoded + after, (
            _plain_value(value) or _FIELD_VALUE.fullmatch(encoded) is not None
        )
        if len(lines) >= _CACHED_VALUES:
            lines.clear()
        lines[value] = made
    return made


def _connection_listed(upgrade: UpgradeRequest) -> set[bytes] | frozenset[bytes]:
    """The headers the client's Connection header names (hop-by-hop: not forwarded)."""
    if upgrade.plain_connection is upgrade.headers:
        return _ONLY_UPGRADE  # as read_upgrade() saw it: the loop below would say so
    for name, value in upgrade.headers:
        if name == b"connection" and value.lower() != b"upgrade":
            return set(upgrade.header_list(b"connection"))
    return _ONLY_UPGRADE  # the usual "Connection: Upgrade" (an upgrade has one)


_ONLY_UPGRADE: Final = frozenset({b"upgrade"})
#: What upstream_request_bytes() never forwards (with "upgrade", which Connection names).
_SKIPPED: Final = _NOT_FORWARDED | PROXY_OWNED | _ONLY_UPGRADE


def check_own_values(
    authority: str, forwarding: Forwarding, more: Iterable[Header] = ()
) -> None:
    """Check the header values of the proxy's own in a request it writes: what h11
    would refuse when it builds an event of them (the client's were checked when h11
    read them, so an event built of both may skip h11's checks: ``_parsed=True``).

    Raises:
        h11.LocalProtocolError: one is no valid header value (or *more*'s names, and
            the identity header names, no token).
    """
    identity = forwarding.identity
    own: tuple[str, ...] = (
        authority, forwarding.forwarded_for, forwarding.proto, forwarding.request_id
    )
    if identity:
        own += tuple(v for _, v in identity)
    for value in own:
        if not _plain_value(value) and not _FIELD_VALUE.fullmatch(value.encode("latin-1")):
            raise h11.LocalProtocolError("illegal header value of the proxy's own")
    if identity and not all(_TOKEN.fullmatch(k) for k, _ in identity):
        raise h11.LocalProtocolError("illegal header value of the proxy's own")
    if more:
        check_header_values(more)


def check_header_values(headers: Iterable[Header]) -> None:
    """Raises h11.LocalProtocolError where h11 would for one of *headers*."""
    for name, value in headers:
        if not _TOKEN.fullmatch(name.decode("latin-1")) or not _FIELD_VALUE.fullmatch(value):
            raise h11.LocalProtocolError(f"illegal header {name!r}: {value!r}")


def _upstream_head(
    upgrade: UpgradeRequest,
    *,
    authority: str,
    path_prefix: str,
    key: bytes,
    forwarding: Forwarding,
    pass_extensions: bool,
    owned: frozenset[bytes],
) -> tuple[bytes, list[Header]]:
    """The target and the headers of the backend's handshake request (Host first)."""
    connection_listed = set(upgrade.header_list(b"connection"))
    headers: list[Header] = [
        (b"Host", authority.encode("latin-1")),
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Key", key),
        (b"Sec-WebSocket-Version", b"13"),
    ]
    if upgrade.subprotocols:
        headers.append((b"Sec-WebSocket-Protocol", ", ".join(upgrade.subprotocols).encode()))
    if pass_extensions:
        headers.extend((b"Sec-WebSocket-Extensions", v) for v in upgrade.extensions)
    for name, value in upgrade.headers:
        if name in _NOT_FORWARDED or name in PROXY_OWNED or name in connection_listed or (
            name in owned
        ):
            continue
        headers.append((name, value))
    headers += [
        (b"X-Forwarded-For", forwarding.forwarded_for.encode("latin-1")),
        (b"X-Forwarded-Proto", forwarding.proto.encode("latin-1")),
        (b"X-Forwarded-Host", upgrade.host),
        (b"X-Request-Id", forwarding.request_id.encode("latin-1")),
    ]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in forwarding.identity]
    return join(path_prefix, upgrade.target), headers


#: The lines of a fresh key and of its answer, as most peers write them.
_KEY_LINE: Final = b"Sec-WebSocket-Key: "
_KEY_START: Final = len(_KEY_LINE)
_ACCEPT_LINE: Final = b"Sec-WebSocket-Accept: "
_ACCEPT_START: Final = len(_ACCEPT_LINE)
#: The headers read_upgrade() looks at, by what it does with them (see there).
_FRAMING, _HOST, _UPGRADE, _CONNECTION, _VERSION, _KEY, _PROTOCOL, _ORIGIN, _EXTENSIONS = range(9)
_WATCHED_REQUEST: Final = {
    b"content-length": _FRAMING, b"transfer-encoding": _FRAMING, b"host": _HOST,
    b"upgrade": _UPGRADE, b"connection": _CONNECTION, b"sec-websocket-version": _VERSION,
    b"sec-websocket-key": _KEY, b"sec-websocket-protocol": _PROTOCOL, b"origin": _ORIGIN,
    b"sec-websocket-extensions": _EXTENSIONS,
}
#: A kind no header of a head had: its first and its last value are None.
_NONE: Final = (None,)
#: The request headers that count once (a second one: check_upgrade_head() decides).
_SINGLE_REQUEST: Final = (_UPGRADE, _CONNECTION, _VERSION, _KEY, _PROTOCOL)


#: What scan_request() gives: (method, target, headers, where the rest starts, a
#: watched header more than once, Host, Upgrade, Connection, Sec-WebSocket-Version,
#: Sec-WebSocket-Key, Sec-WebSocket-Protocol, the first Origin, every
#: Sec-WebSocket-Extensions).
ScannedRequest = tuple[
    bytes, bytes, tuple[Header, ...], int, bool, bytes, bytes, bytes | None, bytes | None,
    bytes | None, bytes | None, bytes | None, tuple[bytes, ...],
]


def py_scan_request(data: bytes, max_head: int) -> ScannedRequest | None:
    """The head of the upgrade request *data* starts with, read line by line as h11
    reads it, with the headers §4.2.1 asks about picked out as the lines are read;
    None when it is not in the plainest form (see read_upgrade()), or has no single
    Host or no Upgrade header.

    The readable reference, and the fallback, of ``_heads.scan_request`` (C):
    tests/unit/test_heads_twins.py holds the two to the same answers.
    """
    head = _head_lines(data, max_head)
    if head is None:
        return None
    lines, rest_at = head
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None:
        return None
    read = _headers(lines, _KEY_LINE, b"sec-websocket-key", _key_is_valid, _WATCHED_REQUEST)
    if read is None:
        return None
    headers, picked = read
    hosts, upgrade = picked.get(_HOST, ()), picked.get(_UPGRADE)
    if len(hosts) != 1 or upgrade is None:
        return None
    # A watched header more than once: check_upgrade_head() decides (the last counts).
    odd = any(len(picked.get(kind, ())) > 1 for kind in _SINGLE_REQUEST)
    get = picked.get
    return (
        line[1], line[2], headers, rest_at, odd, hosts[0], upgrade[-1],
        get(_CONNECTION, _NONE)[-1], get(_VERSION, _NONE)[-1], get(_KEY, _NONE)[-1],
        get(_PROTOCOL, _NONE)[-1], get(_ORIGIN, _NONE)[0], tuple(get(_EXTENSIONS, ())),
    )


def read_upgrade(data: bytes, max_head: int) -> tuple[UpgradeRequest, bytes] | None:
    """The upgrade request that *data* starts with, read as h11 reads it and checked
    as check_upgrade_head() checks it, in one pass: (the checked request, the bytes
    after its head), or None when h11 is to read it.

    Only for the plainest form of an upgrade: the whole head in *data* and at most
    *max_head* bytes, ``HTTP/1.1``, CRLF line ends, ``token: value`` lines (names
    lower-cased, values without the whitespace around them, as h11 gives them), one
    Host, an Upgrade header, no Content-Length or Transfer-Encoding. Anything else (a
    plain request, a probe, a head in pieces, obs-folds, bare LFs, framing headers,
    more or less than one Host) goes to h11, whose verdicts stand. Running h11 on
    every upgrade request cost about a fifth of an upgrade's CPU.

    The lines are read by ``scan_request`` (C where it was built, else
    py_scan_request()), which picks out the headers §4.2.1 asks about. The usual
    upgrade (one each of Upgrade: websocket, Connection: Upgrade, version 13 and a
    valid key, a GET, a plain target) is built here; anything else, a refusal
    included, goes to check_upgrade_head() with the same headers, whose verdict (and
    status, reason and headers) stands.

    Raises:
        HandshakeRejected: as check_upgrade_head().
    """
    return upgrade_read(read_request(data, max_head), data)


def upgrade_read(
    read: PlainUpgrade | ScannedRequest | None, data: bytes
) -> tuple[UpgradeRequest, bytes] | None:
    """read_upgrade()'s answer from read_request()'s *read* of *data*.

    Raises:
        HandshakeRejected: as check_upgrade_head().
    """
    if read is None:
        return None
    if len(read) == 2:  # the plainest valid upgrade, checked and made (read_request())
        return read[0], data[read[1]:]
    (method, raw_target, headers, rest_at, odd, host, upgrade, connection, version, key,
     protocol, origin, extensions) = read
    rest = data[rest_at:]
    if (
        odd or method != b"GET" or upgrade.lower() != b"websocket" or connection is None
        or connection.lower() != b"upgrade" or version != b"13" or key is None
        or not _key_is_valid(key)
    ):
        return check_upgrade_head(method, raw_target, b"1.1", headers), rest
    try:
        target = backend_target(raw_target)
    except UnsafeTarget:
        return check_upgrade_head(method, raw_target, b"1.1", headers), rest
    subprotocols: tuple[str, ...] = ()
    if protocol is not None:
        subprotocols = _offers(protocol)
        if not all(_TOKEN.fullmatch(p) for p in subprotocols):
            return check_upgrade_head(method, raw_target, b"1.1", headers), rest
    return UpgradeRequest(
        target=target, host=host, key=key, subprotocols=subprotocols,
        extensions=extensions, origin=None if origin is None else origin.decode("latin-1"),
        headers=headers, plain_connection=headers,  # (not odd: one Connection header)
    ), rest


#: What read_request() gives for the plainest valid upgrade, checked: (the request,
#: where the rest starts).
PlainUpgrade = tuple[UpgradeRequest, int]


def py_read_request(data: bytes, max_head: int) -> PlainUpgrade | ScannedRequest | None:
    """scan_request()'s reading of *data*, and read_upgrade()'s verdict on the usual
    upgrade in the same call: None (h11 reads it); a PlainUpgrade (the request made)
    when the head is the plainest valid upgrade (a GET; one each of Upgrade: websocket, Connection:
    Upgrade, version 13 and a valid key; a target with no '.', '%', '\\' or '#' in
    its path; subprotocol offers that are tokens); else scan_request()'s tuple, for
    read_upgrade() to decide in Python.

    The readable reference, and the fallback, of ``_heads.read_request`` (C):
    tests/unit/test_heads_twins.py holds the two to the same answers.
    """
    scanned = scan_request(data, max_head)
    if scanned is None:
        return None
    (method, target, headers, rest_at, odd, host, upgrade, connection, version, key,
     protocol, origin, extensions) = scanned
    if (
        odd or method != b"GET" or upgrade.lower() != b"websocket" or connection is None
        or connection.lower() != b"upgrade" or version != b"13" or key is None
        or not _key_is_valid(key) or _PLAIN_TARGET.fullmatch(target) is None
    ):
        return scanned
    subprotocols: tuple[str, ...] = ()
    if protocol is not None:
        subprotocols = _offers(protocol)
        if not all(_TOKEN.fullmatch(p) for p in subprotocols):
            return scanned
    return UpgradeRequest(
        method=method, target=target, host=host, key=key, subprotocols=subprotocols,
        extensions=extensions, origin=None if origin is None else origin.decode("latin-1"),
        headers=headers, plain_connection=headers,  # (not odd: one Connection header)
    ), rest_at


#: A target backend_target() gives back as it is, without a look inside.
_PLAIN_TARGET: Final = re.compile(rb"/[^.%\\#?]*(?:\?.*)?", re.DOTALL)


def _offers(value: bytes) -> tuple[str, ...]:
    """The subprotocol offers of a Sec-WebSocket-Protocol value (case kept)."""
    return tuple(p.strip().decode("latin-1") for p in value.split(b",") if p.strip())


#: The headers of a backend's 101 read_accept() looks at, by kind.
_WATCHED_ACCEPT: Final = {
    b"content-length": _FRAMING, b"transfer-encoding": _FRAMING, b"upgrade": _UPGRADE,
    b"connection": _CONNECTION, b"sec-websocket-accept": _KEY,
    b"sec-websocket-protocol": _PROTOCOL, b"sec-websocket-extensions": _EXTENSIONS,
}
_SWITCHING_PROTOCOLS: Final = b"HTTP/1.1 101 Switching Protocols"

#: What read_accept() gives: (the subprotocol, the extensions, the headers the client's
#: 101 repeats, the bytes after the head).
Accept = tuple[str | None, bytes | None, tuple[Header, ...], bytes]


#: What scan_response() gives: (headers, where the rest starts, a watched header more
#: than once, Upgrade, Connection, Sec-WebSocket-Accept, Sec-WebSocket-Protocol,
#: Sec-WebSocket-Extensions).
ScannedResponse = tuple[
    tuple[Header, ...], int, bool, bytes | None, bytes | None, bytes | None, bytes | None,
    bytes | None,
]


def py_scan_response(data: bytes, max_head: int) -> ScannedResponse | None:
    """The head of the backend's 101 that *data* starts with (within *max_head*
    bytes), read line by line as h11 reads it, with the headers §4.1 asks about
    picked out; None when it is not a 101 in the plainest form (see read_accept()).

    The readable reference, and the fallback, of ``_heads.scan_response`` (C):
    tests/unit/test_heads_twins.py holds the two to the same answers.
    """
    head = _head_lines(data, max_head)
    if head is None:
        return None
    lines, rest_at = head
    status = lines[0]
    if status != _SWITCHING_PROTOCOLS and not _SWITCHING_LINE.fullmatch(status):
        return None
    read = _headers(lines, _ACCEPT_LINE, b"sec-websocket-accept", _is_base64, _WATCHED_ACCEPT)
    if read is None:
        return None
    headers, picked = read
    # A watched header more than once: check_upstream_response() decides.
    odd = any(len(values) > 1 for values in picked.values())
    get = picked.get
    return (
        headers, rest_at, odd, get(_UPGRADE, _NONE)[-1], get(_CONNECTION, _NONE)[-1],
        get(_KEY, _NONE)[-1], get(_PROTOCOL, _NONE)[-1], get(_EXTENSIONS, _NONE)[-1],
    )


def _head_lines(data: bytes, max_head: int) -> tuple[list[bytes], int] | None:
    """The lines of the head *data* starts with (within *max_head* bytes), and where
    the rest starts; None while its blank line is not in."""
    end = data.find(b"\r\n\r\n", 0, max_head)
    if end < 0 or end + 4 > max_head:
        return None
    return data[:end].split(b"\r\n"), end + 4


def _headers(
    lines: list[bytes], fresh_line: bytes, fresh_name: bytes,
    fresh_valid: Callable[[bytes], bool], watched: dict[bytes, int],
) -> tuple[tuple[Header, ...], dict[int, list[bytes]]] | None:
    """The header lines after the first, as h11 reads them, and the values of the
    *watched* ones in order, by what the reader does with them; None at any other
    line, or at a framing header (Content-Length, Transfer-Encoding: h11 checks those).
    *fresh_line* starts a header that is new in every head (the key, or its answer):
    a line the cache would only churn on, taken as it is when *fresh_valid* says its
    value is (base64: a value as _HEADER_LINE reads it)."""
    headers: list[Header] = []
    picked: dict[int, list[bytes]] = {}
    cached = _LINES.get
    kind_of = watched.get
    start = len(fresh_line)
    for text in lines[1:]:
        header = cached(text)
        if header is None:
            if text.startswith(fresh_line) and fresh_valid(text[start:]):
                header = (fresh_name, text[start:])
            else:
                header = _header_line(text)
                if header is None:
                    return None
        headers.append(header)
        kind = kind_of(header[0])
        if kind is not None:
            if kind == _FRAMING:
                return None
            picked.setdefault(kind, []).append(header[1])
    return tuple(headers), picked



def read_accept(
    data: bytes, *, target: str, key: bytes, offered: Sequence[str],
    offered_extensions: Sequence[bytes],
) -> Accept | None:
    """The backend's answer to our handshake with *key*, read as h11 reads it and
    checked as check_upstream_response() checks it, in one pass; None when h11 is to
    read it.

    Only for the plainest form: a complete head, ``HTTP/1.1 101``, CRLF line ends and
    ``token: value`` lines, which h11 reads the same way (names lower-cased, values
    without the whitespace around them). Anything else (an incomplete head, another
    status, obs-folds, bare LFs, framing headers) goes to h11. Running h11 on every
    backend's 101 cost about a tenth of an upgrade's CPU.

    The lines are read by ``scan_response`` (C where it was built, else
    py_scan_response()). The usual 101 (one each of Upgrade: websocket, Connection:
    Upgrade and the right Sec-WebSocket-Accept, at most one subprotocol and one
    extensions header, both offered) is checked here; anything else goes to
    check_upstream_response() with the same headers, whose verdict stands. No
    UpstreamAccepted is made: the caller makes the one it keeps.

    Raises:
        UpstreamUnavailable: as check_upstream_response().
    """
    scanned = scan_response(data, _MAX_PLAIN_HEAD)
    if scanned is None:
        return None
    headers, rest_at, odd, upgrade, connection, accept, protocol, extensions = scanned
    rest = data[rest_at:]
    expected = accept_key(key)
    subprotocol = protocol.strip().decode("latin-1") if protocol else None
    if (
        odd or upgrade is None or upgrade.lower() != b"websocket" or connection is None
        or connection.lower() != b"upgrade" or accept is None
        or accept.strip() != expected
        or (subprotocol is not None and subprotocol not in offered)
        or (extensions and not _extension_names(extensions) <= _extension_names(
            b", ".join(offered_extensions)))
    ):
        accepted = check_upstream_response(
            101, headers, target=target, key=key, offered=offered,
            offered_extensions=offered_extensions,
        )
        return accepted.subprotocol, accepted.extensions, accepted.headers, rest
    # The headers the client's 101 repeats (the watched ones are all _NOT_FORWARDED).
    extra = tuple(h for h in headers if h[0] not in _NOT_FORWARDED and h[0] != b"date")
    return subprotocol, extensions, extra, rest


def py_accept_plain(
    data: bytes, key: bytes, client_key: bytes, subprotocol: str | None,
    client_headers: tuple[Header, ...],
) -> tuple[bytes, int] | None:
    """The backend's answer in *data* to our handshake with *key*, when it is the
    plainest valid 101 that chooses neither a subprotocol nor an extension, and the
    client's 101 made of it at once: (our 101 to the client's *client_key*, with the
    *subprotocol* of the proxy's own if not None, the backend's headers it repeats
    and *client_headers*; where the bytes after the head start). None for any other
    answer: read_accept() decides it.

    The readable reference, and the fallback, of ``_heads.accept_plain`` (C):
    tests/unit/test_heads_twins.py holds the two to the same answers, and
    test_accept_fast_read the verdicts to h11's.
    """
    scanned = scan_response(data, _MAX_PLAIN_HEAD)
    if scanned is None:
        return None
    headers, rest_at, odd, upgrade, connection, accept, protocol, extensions = scanned
    if (
        odd or upgrade is None or upgrade.lower() != b"websocket" or connection is None
        or connection.lower() != b"upgrade" or accept != accept_key(key)
        or protocol is not None or extensions is not None
    ):
        return None
    extra = tuple(h for h in headers if h[0] not in _NOT_FORWARDED and h[0] != b"date")
    return accept_response_of(client_key, subprotocol, None, extra + client_headers), rest_at


def _header_line(text: bytes) -> Header | None:
    """(the lower-cased name, the value) of a ``token: value`` line, as h11 reads it;
    None for any other line. Kept in _LINES when it is short."""
    match = _HEADER_LINE.fullmatch(text)
    if match is None:
        return None
    header = (match[1].lower(), match[2])
    if len(text) <= _CACHED_LINE:
        if len(_LINES) >= _CACHED_LINES:
            _LINES.clear()
        _LINES[text] = header
    return header


def check_upstream_response(
    status: int,
    headers: Sequence[Header],
    *,
    target: str,
    key: bytes,
    offered: Sequence[str],
    offered_extensions: Sequence[bytes],
) -> UpstreamAccepted:
    """Check a backend's answer to our handshake (§4.1, the client's checks).

    Raises:
        UpstreamHandshakeFailed: the backend answered with an HTTP status of its own.
        UpstreamUnavailable: a 101 that is not a valid WebSocket accept.
    """
    if status != 101:
        raise UpstreamHandshakeFailed(target, status)
    values: dict[bytes, bytes] = {}
    for name, value in headers:
        values[name] = values[name] + b", " + value if name in values else value
    # The usual one-word values are compared whole before they are split into tokens.
    upgrade = values.get(b"upgrade", b"")
    if upgrade.lower() != b"websocket" and b"websocket" not in _tokens(upgrade):
        raise UpstreamUnavailable(target, "101 without Upgrade: websocket")
    connection = values.get(b"connection", b"")
    if connection.lower() != b"upgrade" and b"upgrade" not in _tokens(connection):
        raise UpstreamUnavailable(target, "101 without Connection: upgrade")
    if values.get(b"sec-websocket-accept", b"").strip() != accept_key(key):
        raise UpstreamUnavailable(target, "wrong Sec-WebSocket-Accept")
    chosen = values.get(b"sec-websocket-protocol")
    subprotocol = chosen.strip().decode("latin-1") if chosen else None
    if subprotocol is not None and subprotocol not in offered:
        raise UpstreamUnavailable(target, "backend chose a subprotocol nobody offered")
    extensions = values.get(b"sec-websocket-extensions")
    if extensions and not _extension_names(extensions) <= _extension_names(
        b", ".join(offered_extensions)
    ):
        raise UpstreamUnavailable(target, "backend chose an extension nobody offered")
    extra = tuple(
        (n, v) for n, v in headers if n not in _NOT_FORWARDED and n != b"date"
    )
    return UpstreamAccepted(subprotocol=subprotocol, extensions=extensions, headers=extra)


def _extension_names(header: bytes) -> set[bytes]:
    """The extension names in a Sec-WebSocket-Extensions value (§9.1)."""
    return {item.split(b";")[0].strip().lower() for item in header.split(b",") if item.strip()}


def accept_response(client_key: bytes, accepted: UpstreamAccepted) -> bytes:
    """Our 101 to the client, repeating the backend's choices."""
    return accept_response_of(
        client_key, accepted.subprotocol, accepted.extensions, accepted.headers
    )


#: The start of every 101 of ours.
_SWITCHING: Final = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)


def accept_response_of(
    client_key: bytes, subprotocol: str | None, extensions: bytes | None,
    headers: tuple[Header, ...],
) -> bytes:
    """accept_response() of an UpstreamAccepted's parts (one fewer object an upgrade)."""
    head = _SWITCHING + accept_key(client_key)
    if subprotocol is not None:
        head += b"\r\nSec-WebSocket-Protocol: " + subprotocol.encode("latin-1")
    if extensions:
        head += b"\r\nSec-WebSocket-Extensions: " + extensions
    for name, value in headers:
        head += b"\r\n" + name + b": " + value
    return head + b"\r\n\r\n"


def status_phrase(status: int) -> str:
    """The reason phrase of *status* ("Error" for one without a name)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_response(
    status: int, reason: str, headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """A complete HTTP/1.1 error answer that ends the connection.

    The body is the short generic *reason*; details belong in the log.
    """
    body = (reason + "\n").encode("utf-8")
    lines = [
        f"HTTP/1.1 {status} {status_phrase(status)}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _compiled_heads() -> ModuleType | None:
    """``_heads`` (C) where it was built, unless ``WSPROXY_NO_SPEEDUPS=1``; else None
    (the Python twins)."""
    if os.environ.get("WSPROXY_NO_SPEEDUPS", "") not in ("", "0"):
        return None
    try:
        from wsproxy.core import _heads
    except ImportError:
        return None
    return _heads


_HEADS: Final = _compiled_heads()
#: The twins in use: "c" or "python" in HEADS_SPEEDUPS.
if _HEADS is None:
    scan_request, scan_response = py_scan_request, py_scan_response
    read_request, accept_plain = py_read_request, py_accept_plain
    request_head = py_request_head
else:
    scan_request, scan_response = _HEADS.scan_request, _HEADS.scan_response
    read_request, accept_plain = _HEADS.read_request, _HEADS.accept_plain
    _HEADS.set_request_type(UpgradeRequest)  # read_request() makes the request itself
    accept_key = _HEADS.accept_key
    request_head = _HEADS.request_head
HEADS_SPEEDUPS: Final = "python" if _HEADS is None else "c"
