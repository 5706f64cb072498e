"""The plain HTTP core: smuggling checks on raw heads, and the header rewriting of a hop."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsproxy.core.handshake import Forwarding
from wsproxy.core.http import (
    HttpRefused,
    error_answer,
    forward_request,
    forward_response,
    head_length,
    header_pairs,
    is_upgrade,
)

GET = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n"
FORWARDING = Forwarding(client_ip="10.0.0.9", forwarded_for="10.0.0.9", proto="http",
                        request_id="abc-1", identity=(("X-Auth-Subject", "alice"),))


def refused(head: bytes) -> tuple[int, str]:
    with pytest.raises(HttpRefused) as info:
        head_length(head, 16384)
    return info.value.status, info.value.reason


# The head's end…


def test_a_whole_head_is_measured_and_what_follows_is_not():
    assert head_length(GET + b"body bytes", 16384) == len(GET)


def test_a_partial_head_waits():
    assert head_length(GET[:-2], 16384) is None
    assert head_length(b"", 16384) is None


def test_empty_lines_before_the_request_line_are_skipped():
    assert head_length(b"\r\n\r\n" + GET, 16384) == 4 + len(GET)


def test_a_head_over_the_limit_is_431_whole_or_not():
    big = b"GET / HTTP/1.1\r\nX: " + b"a" * 200 + b"\r\n"
    assert head_length(big + b"\r\n", 16384) == len(big) + 2
    with pytest.raises(HttpRefused) as info:
        head_length(big + b"\r\n", 100)
    assert info.value.status == 431
    with pytest.raises(HttpRefused) as info:
        head_length(big, 100)  # not even finished
    assert info.value.status == 431


# Smuggling shapes…

SMUGGLING = {
    "bare LF ending the request line": b"GET / HTTP/1.1\nHost: a\r\n\r\n",
    "bare LF ending a header": b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
    "bare LF ending the head": b"GET / HTTP/1.1\r\nHost: a\n\n",
    "obs-fold with a space": b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
    "obs-fold with a tab": b"GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n",
    "two Content-Length": b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
    "a Content-Length list": b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
    "a signed Content-Length": b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
    "CL and TE": b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    "TE and CL": b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 0\r\n\r\n",
}


@pytest.mark.parametrize("head", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_smuggling_shapes_are_400(head):
    assert refused(head)[0] == 400


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"identity", b"chunked, gzip", b"xchunked",
                                    b"chunked\r\nTransfer-Encoding: chunked"])
def test_other_transfer_codings_are_501(coding):
    assert refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: " + coding + b"\r\n\r\n") == (
        501, "unsupported Transfer-Encoding")


def test_the_clean_framings_pass():
    for head in (
        b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding:  Chunked \r\n\r\n",
        b"GET / HTTP/1.1\r\nX-Folded-Looking: a b\r\n\r\n",
    ):
        assert head_length(head, 16384) == len(head)


@given(st.binary(max_size=300))
def test_any_bytes_get_an_answer_not_a_crash(data):
    status, end = None, None
    try:
        end = head_length(data, 256)
    except HttpRefused as exc:
        status = exc.status
    assert status in (None, 400, 431, 501)
    assert end is None or 0 < end <= len(data)


# Rewriting…


def request(*headers: tuple[bytes, bytes], target: bytes = b"/p?q=1",
            version: bytes = b"1.1") -> h11.Request:
    return h11.Request(method="POST", target=target, headers=list(headers),
                       http_version=version)


def forward(req: h11.Request, **kwargs) -> list[tuple[bytes, bytes]]:
    out = forward_request(
        req, target=bytes(req.target), headers=[(bytes(k), bytes(v)) for k, v in req.headers],
        authority="10.1.1.1:8000", path_prefix=kwargs.pop("path_prefix", ""),
        forwarding=FORWARDING, **kwargs,
    )
    return [(bytes(k), bytes(v)) for k, v in out.headers]


def test_the_forwarded_request_is_rewritten_for_one_hop():
    req = request(
        (b"Host", b"app.example"), (b"Content-Length", b"3"), (b"Connection", b"keep-alive, X-Hop"),
        (b"X-Hop", b"1"), (b"Keep-Alive", b"timeout=5"), (b"TE", b"trailers"),
        (b"X-Forwarded-For", b"6.6.6.6"), (b"X-Auth-Subject", b"mallory"), (b"Via", b"1.0 lb"),
        (b"Accept", b"*/*"),
    )
    assert forward(req) == [
        (b"host", b"10.1.1.1:8000"),
        (b"accept", b"*/*"),
        (b"content-length", b"3"),
        (b"x-forwarded-for", b"10.0.0.9"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"app.example"),
        (b"x-request-id", b"abc-1"),
        (b"x-auth-subject", b"alice"),
        (b"via", b"1.0 lb"),
        (b"via", b"1.1 wsproxy"),
    ]


def test_a_chunked_request_stays_chunked_and_the_prefix_goes_first():
    req = request((b"Host", b"a"), (b"Transfer-Encoding", b"chunked"))
    out = forward_request(req, target=b"/x", headers=[(bytes(k), bytes(v)) for k, v in req.headers],
                          authority="b:1", path_prefix="/app/", forwarding=FORWARDING)
    assert out.target == b"/app/x"
    assert (b"transfer-encoding", b"chunked") in list(out.headers)


def test_an_http10_request_without_host_says_so_in_via():
    headers = forward(request(target=b"/", version=b"1.0"))
    assert (b"via", b"1.0 wsproxy") in headers
    assert not any(name == b"x-forwarded-host" for name, _ in headers)


def test_owned_headers_are_dropped():
    headers = forward(request((b"Host", b"a"), (b"X-Tenant", b"evil")),
                      owned=frozenset({b"x-tenant"}))
    assert not any(name == b"x-tenant" for name, _ in headers)


def test_the_response_loses_its_hop_by_hop_fields_and_gains_via():
    response = h11.Response(status_code=200, headers=[
        (b"Content-Length", b"2"), (b"Connection", b"x-a"), (b"X-A", b"1"),
        (b"Transfer-Encoding", b"chunked"), (b"Keep-Alive", b"timeout=5"), (b"Server", b"app"),
    ])
    out = forward_response(response, close=False)
    assert [(bytes(k), bytes(v)) for k, v in out.headers] == [
        (b"content-length", b"2"), (b"server", b"app"), (b"via", b"1.1 wsproxy")]
    closing = forward_response(response, close=True)
    assert (b"connection", b"close") in list(closing.headers)


def test_an_informational_response_stays_one():
    out = forward_response(h11.InformationalResponse(status_code=100, headers=[]), close=True)
    assert isinstance(out, h11.InformationalResponse)
    assert not any(k == b"connection" for k, _ in out.headers)  # 1xx never closes


def test_the_proxy_s_own_answer():
    response, body = error_answer(503, "no healthy backend", [("Retry-After", "5")], close=True)
    assert body == b"no healthy backend\n"
    headers = dict(response.headers)
    assert headers[b"content-length"] == b"19"
    assert headers[b"retry-after"] == b"5"
    assert headers[b"connection"] == b"close"


def test_upgrade_means_any_upgrade_header():
    assert is_upgrade(request((b"Host", b"a"), (b"Upgrade", b"websocket")))
    assert not is_upgrade(request((b"Host", b"a")))


# The events forwarded skip h11's per-header checks (_parsed=True): what they hold
# was read by h11 or is the proxy's own, and the proxy's own values are checked here.


def test_the_forwarded_events_write_what_validated_ones_would():
    req = request((b"Host", b"x"), (b"Cookie", b"a=1; b=2"), (b"Content-Length", b"3"),
                  (b"Via", b"1.1 lb"), target=b"/a?b=1")
    fast = forward_request(req, target=b"/a?b=1",
                           headers=[(bytes(k), bytes(v)) for k, v in req.headers],
                           authority="b:1", path_prefix="/p", forwarding=FORWARDING)
    checked = h11.Request(method=fast.method, target=fast.target,
                          headers=list(fast.headers.raw_items()))
    assert h11.Connection(h11.CLIENT).send(fast) == h11.Connection(h11.CLIENT).send(checked)
    response = h11.Response(status_code=200, headers=[("Content-Length", "2")], reason="OK")
    out = forward_response(response, close=True, extra=((b"Set-Cookie", b"s=b1"),))
    again = h11.Response(status_code=200, headers=list(out.headers.raw_items()), reason=b"OK")
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    server.next_event()
    twin = h11.Connection(h11.SERVER)
    twin.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    twin.next_event()
    assert server.send(out) == twin.send(again)


@pytest.mark.parametrize("bad", ["a\r\nX-Evil: 1", "a\nb", "a\x00b", " padded"])
def test_a_bad_value_of_the_proxy_s_own_is_still_refused(bad):
    req = request((b"Host", b"x"), target=b"/")
    headers = [(bytes(k), bytes(v)) for k, v in req.headers]
    with pytest.raises(h11.LocalProtocolError):
        forward_request(req, target=b"/", headers=headers, authority="b:1", path_prefix="",
                        forwarding=Forwarding("1.2.3.4", "1.2.3.4", "http", "r1",
                                              identity=(("X-Auth-Subject", bad),)))
    with pytest.raises(h11.LocalProtocolError):
        forward_request(req, target=b"/", headers=headers, authority=bad, path_prefix="",
                        forwarding=FORWARDING)
    response = h11.Response(status_code=200, headers=[("Content-Length", "0")])
    with pytest.raises(h11.LocalProtocolError):
        forward_response(response, close=False, extra=((b"Set-Cookie", bad.encode()),))
    with pytest.raises(h11.LocalProtocolError):
        forward_response(response, close=False, extra=((b"Bad Name", b"v"),))


def test_header_pairs_are_what_iterating_the_headers_gives():
    req = request((b"Host", b"x"), (b"X-Thing", b"a  b"), (b"COOKIE", b"c=1"),
                  (b"Content-Length", b"0"))
    assert header_pairs(req) == [(bytes(n), bytes(v)) for n, v in req.headers]
