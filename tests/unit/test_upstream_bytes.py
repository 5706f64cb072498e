"""upstream_request_bytes() with its shortcuts equals the way it was before them (issue 18).

The shortcuts: the lines around the config's values (a backend's authority, the
listener's X-Forwarded-Proto) made and checked once per value, and no look for
headers the Connection header names where read_upgrade() saw one plain "Connection:
Upgrade". ``cold()`` below is the function as it was without them; hypothesis
(derandomized) holds the two to the same bytes, or the same exception and message,
on requests read either way (read_upgrade and h11's check_upgrade_head), whose
headers are then changed or not (as auth and the sticky cookie do), with values of
the proxy's own that are valid, invalid (CR, LF, NUL, spaces at an end) or not Latin-1,
each asked twice (the value new, then known).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import h11
from hypothesis import given, settings
from hypothesis import strategies as st

from wsproxy.core import handshake
from wsproxy.core.handshake import (
    Forwarding,
    UpgradeRequest,
    check_own_values,
    check_upgrade_head,
    read_upgrade,
    upstream_request_bytes,
)
from wsproxy.core.paths import join

SETTINGS = settings(derandomize=True, max_examples=600, deadline=None)
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def cold(
    upgrade: UpgradeRequest, *, authority: str, path_prefix: str, key: bytes,
    forwarding: Forwarding, pass_extensions: bool, owned: frozenset[bytes] = frozenset(),
) -> bytes:
    """upstream_request_bytes() before the shortcuts (7db531f's)."""
    target = join(path_prefix, upgrade.target)
    listed: set[bytes] | frozenset[bytes] = handshake._ONLY_UPGRADE
    for name, value in upgrade.headers:
        if name == b"connection" and value.lower() != b"upgrade":
            listed = set(upgrade.header_list(b"connection"))
            break
    parts = [
        b"GET ", target, b" HTTP/1.1\r\nHost: ", authority.encode("latin-1"),
        b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ", key,
        b"\r\nSec-WebSocket-Version: 13",
    ]
    if upgrade.subprotocols:
        parts += (b"\r\nSec-WebSocket-Protocol: ", ", ".join(upgrade.subprotocols).encode())
    if pass_extensions:
        for value in upgrade.extensions:
            parts += (b"\r\nSec-WebSocket-Extensions: ", value)
    skipped = handshake._SKIPPED | listed | owned
    for name, value in upgrade.headers:
        if name not in skipped:
            parts += (b"\r\n", name, b": ", value)
    parts += (
        b"\r\nX-Forwarded-For: ", forwarding.forwarded_for.encode("latin-1"),
        b"\r\nX-Forwarded-Proto: ", forwarding.proto.encode("latin-1"),
        b"\r\nX-Forwarded-Host: ", upgrade.host,
        b"\r\nX-Request-Id: ", forwarding.request_id.encode("latin-1"),
    )
    for name_text, value_text in forwarding.identity:
        parts += (b"\r\n", name_text.encode("latin-1"), b": ", value_text.encode("latin-1"))
    parts.append(b"\r\n\r\n")
    if not handshake._TARGET.fullmatch(target):
        raise h11.LocalProtocolError("illegal request target")
    check_own_values(authority, forwarding)
    return b"".join(parts)


def outcome(fn: object, *args: object, **kwargs: object) -> tuple[str, object]:
    try:
        return "bytes", fn(*args, **kwargs)  # type: ignore[operator]
    except (h11.LocalProtocolError, UnicodeEncodeError) as exc:
        return type(exc).__name__, str(exc)


#: Values of the proxy's own: plain ones, and what a header value may not hold.
VALUES = st.one_of(
    st.sampled_from(["backend:80", "127.0.0.1:9001", "http", "https", "10.0.0.1, 1.2.3.4",
                     "abc123", "", "a b", " padded", "tab\there", "x\r\nX-Evil: 1", "nul\0",
                     "caf\xe9", "\u20ac", "[::1]:80"]),
    st.text(st.sampled_from("ab:1. \t\r\n\0\xe9\u20ac[]-"), max_size=8),
)
CONNECTIONS = st.sampled_from([b"Upgrade", b"upgrade", b"keep-alive, Upgrade", b"X-Hop, Upgrade",
                               b"Upgrade, X-Hop, x-other"])
EXTRA = st.lists(st.tuples(st.sampled_from([b"x-hop", b"x-other", b"cookie", b"user-agent",
                                            b"x-forwarded-for", b"connection", b"x-auth-tenant",
                                            b"keep-alive"]),
                           st.sampled_from([b"1", b"a=b", b"Upgrade", b"X-Hop"])),
                 max_size=4)


def head(connection: bytes, extra: list[tuple[bytes, bytes]], protocol: bool) -> bytes:
    lines = [b"GET /chat?x=1 HTTP/1.1", b"Host: example.com", b"Upgrade: websocket",
             b"Connection: " + connection, b"Sec-WebSocket-Key: " + KEY,
             b"Sec-WebSocket-Version: 13"]
    if protocol:
        lines.append(b"Sec-WebSocket-Protocol: chat, v2")
    lines += [name + b": " + value for name, value in extra]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@st.composite
def requests(draw: st.DrawFn) -> UpgradeRequest:
    data = head(draw(CONNECTIONS), draw(EXTRA), draw(st.booleans()))
    read = read_upgrade(data, 8192) if draw(st.booleans()) else None
    if read is not None:
        request = read[0]
    else:  # as h11 reads it: the same lines, with no plain_connection
        lines = data[:-4].split(b"\r\n")
        headers = tuple((n.lower(), v) for n, v in (line.split(b": ", 1) for line in lines[1:]))
        request = check_upgrade_head(b"GET", b"/chat?x=1", b"1.1", headers)
    change = draw(st.sampled_from(["none", "drop_last", "add_connection", "same_again"]))
    if change == "drop_last" and request.headers:  # as auth strips a credential
        request = dataclasses.replace(request, headers=request.headers[:-1])
    elif change == "add_connection":  # headers anew: plain_connection is stale
        request = dataclasses.replace(
            request, headers=(*request.headers, (b"connection", b"x-other"), (b"x-other", b"2")))
    elif change == "same_again":  # equal headers, another tuple
        request = dataclasses.replace(request, headers=tuple(list(request.headers)))
    return request


@SETTINGS
@given(requests(), VALUES, VALUES, VALUES, VALUES,
       st.lists(st.tuples(st.sampled_from(["X-Auth-Subject", "X Bad", "X-Auth-Tenant"]), VALUES),
                max_size=2),
       st.sampled_from(["", "/app/", "/p", "/a b"]), st.booleans(),
       st.sampled_from([frozenset(), frozenset({b"x-auth-tenant"}), frozenset({b"cookie"})]))
def test_the_same_bytes_or_refusal_as_before(
    request: UpgradeRequest, authority: str, proto: str, forwarded_for: str, request_id: str,
    identity: list[tuple[str, str]], prefix: str, pass_extensions: bool,
    owned: frozenset[bytes],
) -> None:
    forwarding = Forwarding(client_ip="1.2.3.4", forwarded_for=forwarded_for, proto=proto,
                            request_id=request_id, identity=tuple(identity))
    kwargs: dict[str, Any] = dict(
        authority=authority, path_prefix=prefix, key=b"k", forwarding=forwarding,
        pass_extensions=pass_extensions, owned=owned,
    )
    expected = outcome(cold, request, **kwargs)
    assert outcome(upstream_request_bytes, request, **kwargs) == expected  # new values
    assert outcome(upstream_request_bytes, request, **kwargs) == expected  # known ones


def test_a_stale_plain_connection_is_not_trusted() -> None:
    """Headers replaced after read_upgrade() (a Connection header that names another):
    the one named is dropped, as the look that plain_connection spares would."""
    read = read_upgrade(head(b"Upgrade", [(b"x-hop", b"1")], False), 8192)
    assert read is not None
    request = read[0]
    assert request.plain_connection is request.headers
    changed = dataclasses.replace(request, headers=(*request.headers, (b"connection", b"x-hop")))
    forwarding = Forwarding(client_ip="1.2.3.4", forwarded_for="1.2.3.4", proto="http",
                            request_id="r1")
    kwargs: dict[str, Any] = dict(authority="b:80", path_prefix="", key=b"k", forwarding=forwarding,
                  pass_extensions=False)
    assert b"x-hop: 1" in upstream_request_bytes(request, **kwargs)
    assert b"x-hop" not in upstream_request_bytes(changed, **kwargs)
    assert upstream_request_bytes(changed, **kwargs) == cold(changed, **kwargs)
