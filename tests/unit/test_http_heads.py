"""Plain HTTP heads read and written without h11 (core/http_heads.py) give what the h11
path gives on the same bytes: the same request or response, the same framing and
keep-alive, and the same bytes written to the backend and to the client. A head the
fast path does not take is h11's, whose verdicts (and the smuggling checks of
core/http.py) stand unchanged.

Properties with hypothesis, derandomized (the same inputs every run), on mostly plain
heads with a few pieces changed, so that both the fast path and the fallback are hit.
"""

from __future__ import annotations

import contextlib

import h11
import pytest
from hypothesis import event as tally
from hypothesis import given, settings
from hypothesis import strategies as st

from wsproxy.core import http_heads
from wsproxy.core.handshake import Forwarding
from wsproxy.core.http import (
    HttpRefused,
    forward_head,
    forward_request,
    forward_response,
    forward_response_headers,
    head_length,
    header_pairs,
    is_upgrade,
)
from wsproxy.core.http_heads import (
    NOT_PLAIN,
    PlainRequest,
    PlainResponse,
    forward_request_bytes,
    forward_response_bytes,
    forward_template,
    read_request,
    read_response,
    request_bytes,
    response_bytes,
)

SETTINGS = settings(derandomize=True, max_examples=600, deadline=None)
#: Names an authenticator owns (forward_head()'s *owned*): one the client sends here.
OWNED = frozenset({b"accept", b"x-auth-subject"})
FORWARDING = Forwarding(client_ip="10.0.0.9", forwarded_for="10.0.0.9", proto="http",
                        request_id="abc-1", identity=(("X-Auth-Subject", "alice"),))


def mostly(common: bytes, *others: bytes) -> st.SearchStrategy[bytes]:
    return st.sampled_from([common] * 40 + list(others))


names = st.sampled_from([
    b"Host", b"host", b"Accept", b"User-Agent", b"Content-Length", b"content-length",
    b"Transfer-Encoding", b"Connection", b"Keep-Alive", b"Upgrade", b"Expect", b"Via",
    b"X-Forwarded-For", b"Cookie", b"Bad Name", b"", b"Set-Cookie", b"Date", b"TE",
    b"X\x00", b"a/b", b"\xffname",
])
values = st.sampled_from([
    b"example.com", b"*/*", b"0", b"5", b"12", b"5, 5", b"+5", b"-1", b"chunked",
    b"gzip, chunked", b"close", b"keep-alive", b"Keep-Alive, close", b"upgrade", b"websocket",
    b"100-continue", b"1.1 other", b"", b"  padded  ", b"a\tb", b"a\x00b", b"\xff\xfe", b"x",
    b"a\x0bb", b"a\rb", b"a\nb", b"\x0c", b"a\x7f\x01b", b"\tx\t",
])
ends = mostly(b"\r\n", b"\n", b"\r\n ", b"\r\n\t")
separators = mostly(b": ", b":", b" : ", b":\t", b":  ")


@st.composite
def fields(draw: st.DrawFn, base: list[tuple[bytes, bytes]]) -> bytes:
    out = b""
    chosen = [pair for pair in base if draw(st.integers(0, 10))]
    chosen += draw(st.lists(st.tuples(names, values), max_size=3))
    for name, value in draw(st.permutations(chosen)):
        out += name + draw(separators) + value + draw(mostly(b"", b" ", b"\t")) + draw(ends)
    return out


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """Mostly plain requests, a few pieces changed."""
    line = draw(mostly(
        b"GET / HTTP/1.1", b"POST /upload?x=1 HTTP/1.1", b"GET /a HTTP/1.0", b"HEAD / HTTP/1.1",
        b"get / HTTP/1.1", b"GET http://h/x HTTP/1.1", b"GET * HTTP/1.1", b"GET  / HTTP/1.1",
        b"GET / HTTP/2.0", b"GET / HTTP/1.2", b"GET /\x7f HTTP/1.1", b"GET /healthz HTTP/1.1",
        b"", b"OPTIONS * HTTP/1.1", b"CONNECT h:443 HTTP/1.1",
    ))
    out = draw(mostly(b"", b"\r\n")) + line + draw(ends)
    out += draw(fields([(b"Host", b"app"), (b"Accept", b"*/*"), (b"Content-Length", b"5")]))
    out += draw(mostly(b"\r\n", b"\n", b""))
    return out + draw(st.sampled_from([b"", b"hello", b"hello world", b"GET / HTTP/1.1\r\n"]))


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    """Mostly plain responses, a few pieces changed."""
    line = draw(mostly(
        b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found", b"HTTP/1.0 200 OK", b"HTTP/1.1 204 ",
        b"HTTP/1.1 304 Not Modified", b"HTTP/1.1 200", b"HTTP/1.1 100 Continue",
        b"HTTP/1.1 101 Switching", b"HTTP/1.1 099 Low", b"HTTP/2.0 200 OK", b"HTTP/1.1 600 X",
        b"HTTP/1.1 200 O\x01K", b"HTTP/1.1 20 OK", b"http/1.1 200 OK", b"HTTP/1.1 200 \xffok",
    ))
    out = line + draw(ends)
    out += draw(fields([(b"Content-Length", b"5"), (b"Content-Type", b"text/plain")]))
    out += draw(mostly(b"\r\n", b"\n", b""))
    return out + draw(st.sampled_from([b"", b"hello", b"hello world"]))


def h11_request(data: bytes, max_head: int) -> h11.Request | None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    return event if isinstance(event, h11.Request) else None


# Requests…


@SETTINGS
@given(requests(), st.sampled_from([60, 200, 8192]))
def test_a_request_the_fast_path_reads_is_what_h11_reads(data: bytes, max_head: int) -> None:
    read = read_request(data, max_head)
    tally("fast" if read is not None else "h11")
    if read is None:
        return  # h11's, as before
    head, size = read
    # The smuggling checks would have let it through, and measure it the same.
    assert head_length(data, max_head) == size
    event = h11_request(data, max_head)
    assert event is not None
    assert not is_upgrade(event)
    assert not any(n in (b"expect", b"transfer-encoding") for n, _ in header_pairs(event))
    of_h11 = PlainRequest.of(event)
    assert (head.method, head.target, head.http_version, head.headers, head.length,
            head.keep_alive) == (of_h11.method, of_h11.target, of_h11.http_version,
                                 of_h11.headers, of_h11.length, of_h11.keep_alive)
    # h11's own keep-alive: its state once the exchange is over.
    server = h11.Connection(h11.SERVER)
    server.receive_data(data[:size] + b"x" * head.length)
    for _ in range(3):  # the Request, the body's Data (if any), its EndOfMessage
        if isinstance(server.next_event(), h11.EndOfMessage):
            break
    server.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
    server.send(h11.EndOfMessage())
    assert (server.our_state is h11.DONE) is head.keep_alive
    # The same bytes to the backend.
    target, headers = forward_head(head.http_version, target=head.target,
                                   headers=head.headers, authority="backend:8080",
                                   path_prefix="/p", forwarding=FORWARDING)
    client = h11.Connection(h11.CLIENT)
    sent = client.send(forward_request(event, target=head.target, headers=of_h11.headers,
                                       authority="backend:8080", path_prefix="/p",
                                       forwarding=FORWARDING))
    assert request_bytes(head.method, target, headers) == sent
    # The same bytes again from the connection's template, with the proxy's names
    # (an authenticator's) dropped or not.
    assert head.fields is not None
    for owned in (frozenset(), OWNED):
        target, headers = forward_head(head.http_version, target=head.target,
                                       headers=head.headers, authority="backend:8080",
                                       path_prefix="/p", forwarding=FORWARDING, owned=owned)
        template = forward_template("backend:8080", "/p", FORWARDING, owned)
        assert forward_request_bytes(head, head.fields, head.target, template,
                                     b"abc-1") == request_bytes(head.method, target, headers)


def _reading(read: tuple[PlainRequest, int] | None) -> tuple[object, ...] | None:
    if read is None:
        return None
    head, size = read
    return (head.method, head.target, head.http_version, head.headers, head.length,
            head.keep_alive, head.fields is not None, size)


@SETTINGS
@given(requests(), st.sampled_from([60, 200, 8192]))
def test_a_head_read_again_from_the_cache_reads_as_the_first_time(data: bytes,
                                                                   max_head: int) -> None:
    """read_request() answers a head seen before from its cache: the same verdict and
    head as a cold read, whether the head ends the buffer (its own key) or not."""
    for buffered in (data, data + b"GET / HTTP/1.1\r\n"):
        forget_heads()
        cold = _reading(read_request(buffered, max_head))
        assert _reading(read_request(buffered, max_head)) == cold  # the last head's answer
        http_heads._last_request = (b"\0", None)  # the caches' answer
        assert _reading(read_request(buffered, max_head)) == cold
        http_heads._last_request = (b"\0", None)
        http_heads._REQUEST_FIELDS.clear()  # the head's cache alone
        assert _reading(read_request(buffered, max_head)) == cold
        # The last head's answer is not another limit's.
        assert _reading(read_request(buffered, max(len(buffered) - 1, 0))) == (
            _reading(read_request(buffered, max(len(buffered) - 1, 0))))
        forget_heads()
        assert _reading(read_request(buffered, 40)) == (
            _reading(read_request(buffered, 40)))


def forget_heads() -> None:
    """Empty the caches of read_request() and read_response()."""
    http_heads._REQUESTS.clear()
    http_heads._REQUEST_FIELDS.clear()
    http_heads._RESPONSES.clear()
    http_heads._last_request = (b"\0", None)
    http_heads._last_response = (b"\0 no method", b"", None)


def _reading_response(read: PlainResponse | str | None) -> object:
    if not isinstance(read, PlainResponse):
        return read
    return (read.status, read.reason, read.http_version, read.headers, read.length,
            read.keep_alive, read.size)


@SETTINGS
@given(responses(), st.sampled_from([b"GET", b"HEAD", b"POST"]))
def test_a_response_head_read_again_reads_as_the_first_time(data: bytes,
                                                              method: bytes) -> None:
    """read_response()'s last head and its cache answer as a cold read; a head read for
    one method is read anew for another."""
    for buffered in (data, data + b"HTTP/1.1 200 OK\r\n"):
        forget_heads()
        cold = _reading_response(read_response(buffered, method))
        assert _reading_response(read_response(buffered, method)) == cold
        http_heads._last_response = (b"\0 no method", b"", None)
        assert _reading_response(read_response(buffered, method)) == cold
        for other in (b"GET", b"HEAD", b"POST"):
            again = _reading_response(read_response(buffered, other))
            forget_heads()
            assert again == _reading_response(read_response(buffered, other))
            assert _reading_response(read_response(buffered, method)) == cold


SMUGGLING = {
    "CL and TE": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n",
    "two CLs": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
    "a CL list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
    "a signed CL": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\nHost: a\r\n\r\n",
    "bare LF head end": b"GET / HTTP/1.1\r\nHost: a\n\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "chunked with bad sizes": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"zz\r\n",
    "gzip coding": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    "no Host": b"GET / HTTP/1.1\r\n\r\n",
    "two Hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "an upgrade": b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    "100-continue": b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 1\r\n\r\n",
    "absolute form": b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
    "a head in pieces": b"GET / HTTP/1.1\r\nHost: a\r\n",
    "leading CRLF": b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
}


@pytest.mark.parametrize("data", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_hostile_and_unusual_requests_go_to_h11(data: bytes) -> None:
    assert read_request(data, 8192) is None
    # Seen again (the cache's answer), or with bytes after it: still h11's.
    assert read_request(data, 8192) is None
    assert read_request(data + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 8192) is None


def test_an_oversize_head_goes_to_h11_for_its_431() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 100 + b"\r\n\r\n"
    assert read_request(data, len(data)) is not None
    assert read_request(data, len(data) - 1) is None  # (though the cache knows the head)
    with pytest.raises(HttpRefused) as info:
        head_length(data, len(data) - 1)
    assert info.value.status == 431


def test_http_1_0_and_connection_close_end_the_keep_alive() -> None:
    for data, keep in [
        (b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, CLOSE\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
    ]:
        read = read_request(data, 8192)
        assert read is not None
        assert read[0].keep_alive is keep


def test_pipelined_requests_are_read_one_at_a_time() -> None:
    one = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
    two = b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n"
    read = read_request(one + two, 8192)
    assert read is not None
    head, size = read
    assert (head.target, head.length) == (b"/a", 3)
    assert (one + two)[size + 3:] == two


# Responses…


@SETTINGS
@given(responses(), st.sampled_from([b"GET", b"HEAD", b"POST"]), st.booleans(),
       st.sampled_from([b"1.1", b"1.0"]), st.booleans(),
       st.sampled_from([(), ((b"Set-Cookie", b"wsproxy=b1; Path=/"),)]))
def test_a_response_the_fast_path_reads_is_relayed_as_h11_relays_it(
    data: bytes, method: bytes, client_keeps: bool, client_version: bytes, close: bool,
    extra: tuple[tuple[bytes, bytes], ...],
) -> None:
    read = read_response(data, method)
    tally("fast" if isinstance(read, PlainResponse) else str(read))
    backend = h11.Connection(h11.CLIENT)
    backend.send(h11.Request(method=method, target="/", headers=[("Host", "b")]))
    backend.send(h11.EndOfMessage())
    backend.receive_data(data)
    if read is None:  # not whole yet: h11 has no answer either
        # (h11 refuses some heads early; it reads the whole head later anyway)
        with contextlib.suppress(h11.RemoteProtocolError):
            assert backend.next_event() is h11.NEED_DATA
        return
    if read == NOT_PLAIN:
        return  # h11's, as before
    assert isinstance(read, PlainResponse)
    event = backend.next_event()
    assert isinstance(event, h11.Response)
    assert (read.status, read.reason, read.http_version, read.headers) == (
        event.status_code, bytes(event.reason), bytes(event.http_version),
        header_pairs(event))
    # The same framing: h11 reads as many body bytes, and the same keep-alive after.
    backend.receive_data(b"x" * 40)
    body = 0
    while not isinstance(ev := backend.next_event(), h11.EndOfMessage):
        assert isinstance(ev, h11.Data)
        body += len(ev.data)
    assert body == read.length
    assert (backend.their_state is h11.DONE) is read.keep_alive
    # The same bytes to the client.
    client = h11.Connection(h11.SERVER)
    client.receive_data(b"%s / HTTP/%s\r\nHost: a\r\n%s\r\n" % (
        method, client_version, b"" if client_keeps else b"Connection: close\r\n"))
    client_head = client.next_event()
    assert isinstance(client_head, h11.Request)
    client.next_event()
    keep = PlainRequest.of(client_head).keep_alive
    expected = client.send(forward_response(event, close=close, extra=extra))
    headers = forward_response_headers(read.headers, read.http_version,
                                       close=close or not keep, extra=extra)
    assert response_bytes(read.status, read.reason, headers) == expected
    assert read.fields is not None
    assert forward_response_bytes(read, read.fields, close=close or not keep,
                                  extra=extra) == expected
    client.send(h11.Data(data=b"x" * read.length)) if read.length else None
    client.send(h11.EndOfMessage())
    assert (client.our_state is h11.DONE) is (keep and not close)


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 100 Continue\r\n\r\n",  # a 1xx
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",  # obs-fold
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",  # bare LFs
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n",  # a body read to the close
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * 20000 + b"\r\n\r\n",  # over h11's limit in one piece
])
def test_unusual_responses_go_to_h11(data: bytes) -> None:
    assert read_response(data, b"GET") == NOT_PLAIN


def test_answers_without_a_body() -> None:
    for data, method in [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", b"HEAD"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"GET"),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", b"GET"),
    ]:
        read = read_response(data, method)
        assert isinstance(read, PlainResponse)
        assert read.length == 0
    # A HEAD's answer without a length: h11 writes it a Transfer-Encoding, so it is h11's.
    assert read_response(b"HTTP/1.1 200 OK\r\n\r\n", b"HEAD") == NOT_PLAIN


def test_a_response_head_in_pieces_waits() -> None:
    assert read_response(b"HTTP/1.1 200 OK\r\nContent-Le", b"GET") is None


# The proxy's own values, remembered…


@SETTINGS
@given(st.text(alphabet=st.characters(max_codepoint=255), max_size=12))
def test_a_remembered_check_of_the_proxy_s_values_still_checks_the_request_id(
    request_id: str
) -> None:
    from wsproxy.core.handshake import check_own_values
    from wsproxy.core.http import check_own

    check_own("backend:8080", FORWARDING)  # remembered from now on
    forwarding = Forwarding(client_ip="10.0.0.9", forwarded_for="10.0.0.9", proto="http",
                            request_id=request_id, identity=FORWARDING.identity)
    try:
        check_own_values("backend:8080", forwarding)
        refused = False
    except h11.LocalProtocolError:
        refused = True
    if refused:
        with pytest.raises(h11.LocalProtocolError):
            check_own("backend:8080", forwarding)
    else:
        check_own("backend:8080", forwarding)
