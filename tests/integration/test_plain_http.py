"""``plain_http: proxy`` through a real proxy in this event loop (issue 10).

The behaviour is the README's "Plain HTTP next to the WebSockets". The backend is a real HTTP/1.1
server (tests/integration/http_backend.py: h11 on anyio) that records what it received
and every TCP connection it accepted; the clients are urllib, http.client and curl
(in threads and subprocesses, so that the proxy's loop keeps running), h11's client side,
and raw sockets for the shapes no well-behaved client sends.

Every wait is on state (a gate the backend reached, a response, an EOF, a drain done),
bounded by a generous ``fail_after``; the only time-based checks are lower bounds.
Large bodies and memory are in test_plain_http_process.py (a proxy process).
"""

from __future__ import annotations

import hashlib
import http.client
import re
import shutil
import socket
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import h11
import pytest
from anyio.abc import SocketStream
from websockets.asyncio.client import connect

from tests.helpers import FrameReader, build_raw
from tests.integration.http_backend import (
    WAIT,
    Gate,
    HttpBackend,
    HttpClient,
    Reply,
    http_backend,
    http_client,
    parse_responses,
    pattern_sha256,
    read_until_eof,
)
from tests.integration.peers import make_config, running_proxy, upgrade_request
from tests.integration.test_admin import admin
from wsproxy.config import ProxyConfig
from wsproxy.core import frames as fr
from wsproxy.supervisor import ProxyContext

pytestmark = pytest.mark.anyio

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")
#: Request headers a client must not be able to forge towards the backend.
FORGED = [
    ("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.example"), ("Forwarded", "for=6.6.6.6"),
    ("X-Real-IP", "6.6.6.6"), ("X-Request-Id", "chosen-by-client"), ("X-Auth-Subject", "root"),
]


# Helpers -------------------------------------------------------------------------------


def entry(b: HttpBackend, path: str = "") -> dict[str, str]:
    return {"name": b.name, "url": b.url + path}


def http_config(backends: Sequence[HttpBackend | dict[str, str]], **overrides: Any
                ) -> ProxyConfig:
    """A config with ``plain_http: proxy`` in front of *backends*."""
    listed = [b if isinstance(b, dict) else entry(b) for b in backends]
    return make_config(listed, plain_http="proxy", **overrides)


@asynccontextmanager
async def plain_proxy(backends: Sequence[HttpBackend | dict[str, str]], **overrides: Any
                      ) -> AsyncIterator[ProxyContext]:
    async with running_proxy(http_config(backends, **overrides)) as ctx:
        yield ctx


def port_of(ctx: ProxyContext) -> int:
    return ctx.addresses[0][1]


async def raw(port: int, request: bytes, within: float = WAIT) -> tuple[bytes, bool]:
    """Send *request* on a fresh connection: what came back, and whether it was closed
    (by the server, within *within* seconds)."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        chunks: list[bytes] = []
        closed = False
        with anyio.move_on_after(within):
            while True:
                try:
                    chunks.append(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    closed = True
                    break
        return b"".join(chunks), closed


def one_reply(data: bytes, method: str = "GET") -> Reply:
    replies = parse_responses(data, [method])
    assert replies, data
    return replies[0]


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def urlopen(url: str, data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """urllib, without any proxy from the environment (runs in a worker thread)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(url, data=data), timeout=WAIT) as answer:
        headers = {k.lower(): v for k, v in answer.headers.items()}
        return answer.status, headers, answer.read()


async def curl(*args: str) -> tuple[int, dict[str, str], bytes]:
    """curl -i: the status, headers (lower-cased) and body of the last response."""
    assert CURL is not None
    result = await anyio.run_process(
        [CURL, "--noproxy", "*", "-sS", "-i", "--max-time", str(WAIT), *args], check=True
    )
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    while head.split(b" ", 2)[1:2] == [b"100"]:  # a 100 Continue before the answer
        head, _, body = body.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of *name* whose labels include *labels*."""
    total, found = 0.0, False
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if match is None:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total, found = total + float(match.group(2)), True
    assert found, f"no sample of {name}{labels}"
    return total


async def send_request_head(client: HttpClient, method: str, target: str,
                            headers: Sequence[tuple[str, str]] = ()) -> None:
    """A whole request without a body, not waiting for its answer."""
    await client.send_head(method, target, headers)
    await client.send(h11.EndOfMessage())


# Plain requests with real clients ----------------------------------------------------------


async def test_small_get_with_urllib() -> None:
    async with http_backend() as b, plain_proxy([b]) as ctx:
        status, headers, body = await anyio.to_thread.run_sync(
            urlopen, f"http://127.0.0.1:{port_of(ctx)}/hello?x=1"
        )
    assert status == 200
    assert body == b"hello /hello?x=1\n"
    assert headers["x-backend"] == "b1"
    assert "wsproxy" in headers["via"]
    assert [r.target for r in b.requests] == ["/hello?x=1"]


@needs_curl
async def test_small_get_with_curl() -> None:
    async with http_backend() as b, plain_proxy([b]) as ctx:
        status, headers, body = await curl(f"http://127.0.0.1:{port_of(ctx)}/hello")
    assert status == 200
    assert body == b"hello /hello\n"
    assert "wsproxy" in headers["via"]


@needs_curl
async def test_chunked_upload_with_curl(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 1000
    (tmp_path / "body").write_bytes(payload)
    async with http_backend() as b, plain_proxy([b]) as ctx:
        status, _, body = await curl(
            "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{tmp_path / 'body'}",
            f"http://127.0.0.1:{port_of(ctx)}/echo",
        )
    assert status == 200
    assert body == payload
    assert b.requests[0].body_length == len(payload)
    assert b.requests[0].complete


async def test_the_backend_sees_forwarded_headers_not_the_clients_copies() -> None:
    async with http_backend() as b, plain_proxy([b]) as ctx, http_client(
        port_of(ctx), host="app.example"
    ) as client:
        first = await client.request("GET", "/hello", [*FORGED, ("Via", "1.0 edge")])
        second = await client.request("GET", "/hello")
    assert first.status == second.status == 200
    seen = b.requests[0]
    assert seen.all("host") == [f"127.0.0.1:{b.port}"]
    assert seen.all("x-forwarded-for") == ["127.0.0.1"]  # no trusted proxies
    assert seen.all("x-forwarded-proto") == ["http"]
    assert seen.all("x-forwarded-host") == ["app.example"]
    for name in ("forwarded", "x-real-ip", "x-auth-subject"):
        assert seen.get(name) is None, (name, seen.headers)
    ids = [r.all("x-request-id") for r in b.requests]
    assert all(len(i) == 1 and i[0] for i in ids), ids
    assert ids[0] != ["chosen-by-client"]
    assert ids[0] != ids[1]  # one id per request
    via = seen.get("via")
    assert via is not None
    assert via.startswith("1.0 edge"), via
    assert via.endswith("1.1 wsproxy"), via  # appended to the client's
    assert b.requests[1].get("via") == "1.1 wsproxy"
    assert "wsproxy" in (first.get("via") or "")


async def test_a_backend_path_prefix_is_prepended() -> None:
    async with http_backend() as b, plain_proxy([entry(b, "/prefix")]) as ctx, http_client(
        port_of(ctx)
    ) as client:
        reply = await client.request("GET", "/hello?x=1")
    assert reply.status == 200
    assert [r.target for r in b.requests] == ["/prefix/hello?x=1"]


async def test_hop_by_hop_headers_are_removed_both_ways() -> None:
    sent = [
        ("Connection", "keep-alive, X-Secret"), ("X-Secret", "1"), ("Keep-Alive", "300"),
        ("Proxy-Connection", "keep-alive"), ("TE", "trailers"), ("Trailer", "X-Sum"),
        ("Proxy-Authorization", "Basic eDp5"), ("X-End-To-End", "kept"),
    ]
    async with http_backend() as b, plain_proxy([b]) as ctx, http_client(
        port_of(ctx)
    ) as client:
        reply = await client.request("GET", "/hop", sent)
    [seen] = b.requests
    for name in ("x-secret", "keep-alive", "proxy-connection", "te", "trailer",
                 "proxy-authorization", "upgrade"):
        assert seen.get(name) is None, (name, seen.headers)
    assert "x-secret" not in (seen.get("connection") or "").lower()
    assert seen.get("x-end-to-end") == "kept"
    assert reply.status == 200
    for name in ("x-custom", "keep-alive", "proxy-connection", "proxy-authenticate"):
        assert reply.get(name) is None, (name, reply.headers)
    assert "x-custom" not in reply.tokens("connection")
    assert reply.get("x-kept") == "yes"
    assert reply.body == b"hop\n"


async def test_head_answers_a_length_without_a_body_and_the_connection_goes_on() -> None:
    async with http_backend() as b, plain_proxy([b]) as ctx, http_client(
        port_of(ctx)
    ) as client:
        head = await client.request("HEAD", "/bytes?n=1000")
        after = await client.request("GET", "/hello")
    assert head.status == 200
    assert head.get("content-length") == "1000"
    assert head.body == b""
    assert after.body == b"hello /hello\n"


async def test_http_1_0_client_gets_its_answer_and_a_close() -> None:
    async with http_backend() as b, plain_proxy([b]) as ctx:
        small, small_closed = await raw(port_of(ctx), b"GET /hello HTTP/1.0\r\nHost: x\r\n\r\n")
        # A chunked answer from the backend cannot go chunked to an HTTP/1.0 client.
        big, big_closed = await raw(
            port_of(ctx), b"GET /bytes?n=100000&framing=chunked HTTP/1.0\r\nHost: x\r\n\r\n"
        )
    assert small_closed
    assert big_closed
    reply = one_reply(small)
    assert reply.status == 200
    assert reply.body == b"hello /hello\n"
    reply = one_reply(big)
    assert reply.status == 200
    assert "chunked" not in reply.tokens("transfer-encoding")
    assert hashlib.sha256(reply.body).hexdigest() == pattern_sha256(100000)
    assert all(r.http_version == "1.1" for r in b.requests)  # HTTP/1.1 to the backend


async def test_expect_100_continue_is_relayed_before_the_body() -> None:
    async with http_backend() as b, plain_proxy([b]) as ctx, http_client(
        port_of(ctx)
    ) as client:
        await client.send_head("POST", "/echo", [("Expect", "100-continue"),
                                                 ("Content-Length", "5")])
        with anyio.fail_after(WAIT):  # no body sent yet: the 100 must come first
            interim = await client.next_event()
        assert isinstance(interim, h11.InformationalResponse), interim
        assert interim.status_code == 100
        await client.send(h11.Data(data=b"hello"), h11.EndOfMessage())
        reply = await client.response_head()
        reply.body = await client.read_body()
    assert reply.status == 200
    assert reply.body == b"hello"
    assert b.requests[0].complete


# Keep-alive, pooling, pipelining ----------------------------------------------------------


def five_requests_on_one_connection(port: int) -> list[tuple[int, bytes, object]]:
    """http.client, one connection, five requests: (status, body, local address) each."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        results = []
        for i in range(5):
            conn.request("GET", f"/hello/{i}")
            answer = conn.getresponse()
            body = answer.read()
            results.append((answer.status, body,
                            conn.sock.getsockname() if conn.sock is not None else None))
        return results
    finally:
        conn.close()


async def test_keep_alive_on_the_client_leg() -> None:
    async with http_backend() as b, plain_proxy([b]) as ctx:
        results = await anyio.to_thread.run_sync(five_requests_on_one_connection, port_of(ctx))
    assert [(s, body) for s, body, _ in results] == [
        (200, f"hello /hello/{i}\n".encode()) for i in range(5)
    ]
    addresses = {address for _, _, address in results}
    assert None not in addresses, "the proxy closed a keep-alive connection"
    assert len(addresses) == 1, addresses
    assert len(b.connections) == 1


async def test_sequential_clients_reuse_pooled_backend_connections() -> None:
    async with http_backend() as b, plain_proxy([b]) as ctx:
        for i in range(20):
            async with http_client(port_of(ctx)) as client:
                assert (await client.request("GET", f"/hello/{i}")).status == 200
    assert len(b.requests) == 20
    assert len(b.connections) <= 2, b.connections


async def test_pool_size_0_dials_a_connection_per_request() -> None:
    async with http_backend() as b, plain_proxy([b], http={"pool_size": 0}) as ctx:
        for i in range(5):
            async with http_client(port_of(ctx)) as client:
                assert (await client.request("GET", f"/hello/{i}")).status == 200
    assert len(b.connections) == 5


async def test_pipelined_requests_are_answered_in_order() -> None:
    pipelined = (
        b"GET /gate/first HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /hello/second HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nthird"
        b"GET /hello/fourth HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    async with http_backend() as b, plain_proxy([b]) as ctx, await anyio.connect_tcp(
        "127.0.0.1", port_of(ctx)
    ) as stream:
        await stream.send(pipelined)  # one write: the proxy gets them all at once
        gate = b.gate("first")
        with anyio.fail_after(WAIT):
            await gate.arrived.wait()
        gate.release.set()  # the first is the slowest
        data = await read_until_eof(stream)
    replies = parse_responses(data, ["GET", "GET", "POST", "GET"])
    assert [(r.status, r.body) for r in replies] == [
        (200, b"released /gate/first\n"), (200, b"hello /hello/second\n"),
        (200, b"third"), (200, b"hello /hello/fourth\n"),
    ]


# Bodies, streamed ----------------------------------------------------------------------------


async def test_chunked_upload_and_chunked_download() -> None:
    pieces = [b"a" * 1000, b"b" * 70000, b"c"]
    async with http_backend() as b, plain_proxy([b]) as ctx, http_client(
        port_of(ctx)
    ) as client:
        echoed = await client.request("POST", "/echo?framing=chunked", body=pieces)
        download = await client.request("GET", "/bytes?n=300000&framing=chunked")
        after = await client.request("GET", "/hello")  # the chunked bodies ended cleanly
    assert echoed.status == 200
    assert echoed.body == b"".join(pieces)
    assert b.requests[0].body_length == 71001
    assert b.requests[0].complete
    assert download.status == 200
    assert hashlib.sha256(download.body).hexdigest() == pattern_sha256(300000)
    assert after.status == 200
    assert len(b.connections) == 1


async def test_content_length_bodies_keep_their_length() -> None:
    async with http_backend() as b, plain_proxy([b]) as ctx, http_client(
        port_of(ctx)
    ) as client:
        echoed = await client.request("POST", "/echo?framing=length", body=b"x" * 100000)
        download = await client.request("GET", "/bytes?n=200000&framing=length")
    assert echoed.body == b"x" * 100000
    assert b.requests[0].get("content-length") == "100000"
    assert download.get("content-length") == "200000"
    assert hashlib.sha256(download.body).hexdigest() == pattern_sha256(200000)


async def test_a_request_body_reaches_the_backend_before_it_has_all_arrived() -> None:
    async with http_backend() as b, plain_proxy([b]) as ctx, http_client(
        port_of(ctx)
    ) as client:
        await client.send_head("POST", "/upload-gate/up", [("Content-Length", "10")])
        await client.send(h11.Data(data=b"01234"))
        gate = b.gate("up")
        with anyio.fail_after(WAIT):
            await gate.arrived.wait()  # half the body, forwarded
        gate.release.set()
        await client.send(h11.Data(data=b"56789"), h11.EndOfMessage())
        reply = await client.response_head()
        reply.body = await client.read_body()
    assert (reply.status, reply.body) == (200, b"10\n")


async def test_a_response_body_reaches_the_client_before_it_has_all_been_sent() -> None:
    async with http_backend() as b, plain_proxy([b]) as ctx, http_client(
        port_of(ctx)
    ) as client:
        await send_request_head(client, "GET", "/trickle/down")
        reply = await client.response_head()
        with anyio.fail_after(WAIT):
            first = await client.body_chunk()
        gate = b.gate("down")
        assert gate.arrived.is_set()
        gate.release.set()
        rest = await client.read_body()
    assert reply.status == 200
    assert (first or b"") + rest == b"first\nsecond\n"
    assert first == b"first\n"


# The proxy's own answers -------------------------------------------------------------------


async def test_content_length_over_max_body_size_is_413_before_any_backend() -> None:
    async with http_backend() as b, plain_proxy([b], http={"max_body_size": "1KiB"}) as ctx, \
            http_client(port_of(ctx)) as client:
        await client.send_head("POST", "/sink", [("Content-Length", "4096")])
        reply = await client.response_head()  # no body byte sent
    assert reply.status == 413
    assert (reply.get("content-type") or "").startswith("text/plain")
    assert b.requests == []
    assert b.connections == []


async def test_a_chunked_body_growing_over_max_body_size_is_413_and_closed() -> None:
    chunked = b"".join(b"200\r\n" + b"z" * 512 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"
    async with http_backend() as b, plain_proxy([b], http={"max_body_size": "1KiB"}) as ctx:
        data, closed = await raw(
            port_of(ctx),
            b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked,
        )
    assert one_reply(data, "POST").status == 413
    assert closed
    assert not any(r.complete for r in b.requests)


async def test_a_client_silent_mid_body_gets_408_and_a_close() -> None:
    async with http_backend() as b, plain_proxy([b], http={"body_timeout": "300ms"}) as ctx:
        data, closed = await raw(
            port_of(ctx), b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n012"
        )
    assert one_reply(data, "POST").status == 408
    assert closed
    assert not any(r.complete for r in b.requests)


async def test_a_request_head_over_max_request_head_is_431() -> None:
    request = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 3000 + b"\r\n\r\n"
    async with http_backend() as b, plain_proxy(
        [b], limits={"max_request_head": "2KiB"}
    ) as ctx:
        data, _ = await raw(port_of(ctx), request)
    assert one_reply(data).status == 431
    assert b.requests == []


async def test_a_silent_backend_gives_504() -> None:
    async with http_backend() as b, plain_proxy(
        [b], http={"response_timeout": "300ms"}
    ) as ctx, http_client(port_of(ctx)) as client:
        start = anyio.current_time()
        reply = await client.request("GET", "/gate/never")
        elapsed = anyio.current_time() - start
    assert reply.status == 504
    assert (reply.get("content-type") or "").startswith("text/plain")
    assert elapsed >= 0.3
    assert [r.target for r in b.requests] == ["/gate/never"]


async def test_a_backend_silent_mid_body_gets_the_client_connection_closed() -> None:
    async with http_backend() as b, plain_proxy(
        [b], http={"stream_idle_timeout": "300ms"}
    ) as ctx, http_client(port_of(ctx)) as client:
        await send_request_head(client, "GET", "/trickle/stuck")
        reply = await client.response_head()
        assert reply.status == 200  # relayed at once: too late for a 504
        assert await client.body_chunk() == b"first\n"
        with pytest.raises(h11.RemoteProtocolError), anyio.fail_after(WAIT):
            await client.body_chunk()  # the body never ends: the connection does


async def test_a_closed_backend_port_gives_502() -> None:
    dead = {"name": "dead", "url": f"ws://127.0.0.1:{closed_port()}"}
    async with plain_proxy([dead]) as ctx, http_client(port_of(ctx)) as client:
        reply = await client.request("GET", "/hello")
    assert reply.status == 502
    assert (reply.get("content-type") or "").startswith("text/plain")


async def test_an_unreachable_backend_is_skipped_for_the_next() -> None:
    dead = {"name": "dead", "url": f"ws://127.0.0.1:{closed_port()}"}
    async with http_backend("live") as b, plain_proxy([dead, b]) as ctx:
        for i in range(2):  # whichever the balancer tries first
            async with http_client(port_of(ctx)) as client:
                assert (await client.request("GET", f"/hello/{i}")).status == 200
    assert len(b.requests) == 2


async def test_no_healthy_backend_gives_503_with_retry_after() -> None:
    async with http_backend() as b, plain_proxy([b]) as ctx:
        ctx.set_health(ctx.balancer.backends["b1"], False, checked=False)
        async with http_client(port_of(ctx)) as client:
            reply = await client.request("GET", "/hello")
    assert reply.status == 503
    assert reply.get("retry-after")
    assert b.requests == []


async def test_healthz_and_readyz_are_answered_by_the_proxy() -> None:
    async with http_backend() as b, plain_proxy([b]) as ctx:
        async with http_client(port_of(ctx)) as client:
            healthz = await client.request("GET", "/healthz")
        async with http_client(port_of(ctx)) as client:
            readyz = await client.request("GET", "/readyz")
    assert healthz.status == 200
    assert readyz.status == 200
    assert b.requests == []


async def test_plain_http_reject_is_still_the_default() -> None:
    async with http_backend() as b, running_proxy(make_config([entry(b)])) as ctx:
        data, _ = await raw(port_of(ctx), b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert one_reply(data).status == 400
    assert b.requests == []
    assert b.connections == []


async def test_auth_applies_to_plain_requests(tmp_path: Path) -> None:
    key = "plain-api-key-0123456789abcdef"
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"- {{sha256: {hashlib.sha256(key.encode()).hexdigest()}, subject: ci}}\n")
    auth = {"type": "api_key", "api_key": {"keys_file": str(keys)}}
    async with http_backend() as b, plain_proxy([b], auth=auth) as ctx, http_client(
        port_of(ctx)
    ) as client:
        refused = await client.request("GET", "/hello/no-key")
        async with http_client(port_of(ctx)) as other:
            allowed = await other.request("GET", "/hello/key", [
                ("Authorization", f"Bearer {key}"), ("X-Auth-Subject", "root")])
    assert refused.status == 401
    assert allowed.status == 200
    assert [r.target for r in b.requests] == ["/hello/key"]
    assert b.requests[0].all("x-auth-subject") == ["ci"]


# Request smuggling -----------------------------------------------------------------------------

SMUGGLING = {
    "cl-and-te": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nX",
    "te-and-cl": b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Length: 6\r\n\r\n0\r\n\r\nX",
    "two-equal-cl": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                    b"Content-Length: 5\r\n\r\nhello",
    "two-different-cl": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                        b"Content-Length: 6\r\n\r\nhello!",
    "cl-list": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello",
    "te-gzip-chunked": b"POST /echo HTTP/1.1\r\nHost: x\r\n"
                       b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te-identity": b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n",
    "te-twice": b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs-fold-space": b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
    "obs-fold-tab": b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n\tb\r\n\r\n",
    "bare-lf-request-line": b"GET /hello HTTP/1.1\nHost: x\r\n\r\n",
    "bare-lf-header": b"GET /hello HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n",
    "bare-lf-end": b"GET /hello HTTP/1.1\r\nHost: x\r\n\n",
    "space-before-colon": b"POST /echo HTTP/1.1\r\nHost: x\r\n"
                          b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
}


#: A transfer coding the proxy cannot frame is 501 (RFC 9112 §6.1), as h11 answers it.
STATUS = {"te-gzip-chunked": 501, "te-identity": 501, "te-twice": 501}


@pytest.mark.parametrize("request_bytes", SMUGGLING.values(), ids=SMUGGLING.keys())
@pytest.mark.parametrize("after_a_good_one", [False, True], ids=["first", "second"])
async def test_request_smuggling_shapes_are_refused_and_closed(
    request_bytes: bytes, after_a_good_one: bool
) -> None:
    shape = next(k for k, v in SMUGGLING.items() if v == request_bytes)
    status = STATUS.get(shape, 400)
    # A request after it: if the bad one were misread, this one would be forwarded.
    smuggled = request_bytes + b"GET /hello/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    good = b"GET /hello/good HTTP/1.1\r\nHost: x\r\n\r\n" if after_a_good_one else b""
    async with http_backend() as b, plain_proxy([b]) as ctx:
        data, closed = await raw(port_of(ctx), good + smuggled, within=2.0)  # ms if right
    replies = parse_responses(data, ["GET", "POST"] if good else ["POST"])
    assert [r.status for r in replies] == ([200, status] if good else [status]), data
    assert closed, "the connection was left open"
    assert [r.target for r in b.requests] == (["/hello/good"] if good else [])
    assert len(b.connections) == (1 if good else 0)


# WebSockets on the same port -------------------------------------------------------------------


async def test_a_websocket_upgrade_still_works_next_to_plain_requests() -> None:
    async with http_backend() as b, plain_proxy([b]) as ctx:
        async with connect(f"ws://127.0.0.1:{port_of(ctx)}/ws") as ws:
            await ws.send("hi")
            with anyio.fail_after(WAIT):
                assert await ws.recv() == "hi"
        async with http_client(port_of(ctx)) as client:
            assert (await client.request("GET", "/hello")).status == 200
    assert b.websockets == 1


async def read_head(stream: SocketStream) -> tuple[bytes, bytes]:
    data = b""
    with anyio.fail_after(WAIT):
        while b"\r\n\r\n" not in data:
            data += await stream.receive()
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


async def test_an_upgrade_after_plain_requests_on_one_connection_gets_101() -> None:
    async with http_backend() as b, plain_proxy([b]) as ctx, http_client(
        port_of(ctx)
    ) as client:
        assert (await client.request("GET", "/hello/first")).status == 200
        await client.stream.send(upgrade_request("/ws"))
        head, rest = await read_head(client.stream)
        assert head.startswith(b"HTTP/1.1 101 "), head
        frames = FrameReader()
        frames.feed(rest)
        await client.stream.send(build_raw(fr.TEXT, b"over the same socket"))
        with anyio.fail_after(WAIT):
            while not frames.frames:
                frames.feed(await client.stream.receive())
        assert frames.frames[0].payload == b"over the same socket"
    assert [r.target for r in b.requests] == ["/hello/first", "/ws"]
    assert b.websockets == 1


# Draining ------------------------------------------------------------------------------------


async def test_drain_lets_a_request_in_flight_finish_with_connection_close() -> None:
    async with http_backend() as b, plain_proxy([b], drain={"spread": "20s"}) as ctx, \
            http_client(port_of(ctx)) as client:
        gate = b.gate("flight")
        await send_request_head(client, "GET", "/gate/flight")
        with anyio.fail_after(WAIT):
            await gate.arrived.wait()
        ctx.drain()
        gate.release.set()
        reply = await client.response_head()
        reply.body = await client.read_body()
        assert await client.closed_by_server()
        # Within the spread a new request is still served, and told to go.
        async with http_client(port_of(ctx)) as late:
            answer = await late.request("GET", "/hello/late")
    assert (reply.status, reply.body) == (200, b"released /gate/flight\n")
    assert "close" in reply.tokens("connection")
    assert answer.status == 200
    assert "close" in answer.tokens("connection")


async def test_drain_closes_idle_keep_alive_connections_over_the_spread() -> None:
    async with http_backend() as b, plain_proxy([b]) as ctx, http_client(
        port_of(ctx)
    ) as client:
        assert (await client.request("GET", "/hello")).status == 200
        ctx.drain(spread=0.2)
        assert await client.closed_by_server()


async def test_after_delay_and_spread_new_requests_get_503() -> None:
    async with http_backend() as b, plain_proxy([b], drain={"delay": "0s"}) as ctx:
        drain = ctx.drain(spread=0)
        with anyio.fail_after(WAIT):
            await drain.done.wait()
        async with http_client(port_of(ctx)) as client:
            reply = await client.request("GET", "/hello")
        async with http_client(port_of(ctx)) as client:
            readyz = await client.request("GET", "/readyz")
    assert reply.status == 503
    assert reply.get("retry-after")
    assert "close" in reply.tokens("connection")
    assert readyz.status == 503
    assert b.requests == []


async def test_a_backend_drain_sends_new_requests_elsewhere_and_lets_one_in_flight_finish(
) -> None:
    # A long spread: the one in flight is answered long before its point of it, when a
    # backend drain would end it (test_http_backend_drain.py).
    async with http_backend("b1") as b1, http_backend("b2") as b2, plain_proxy(
        [b1, b2], drain={"spread": "300s", "timeout": "300s"}
    ) as ctx, http_client(port_of(ctx)) as client:
        gates = {b.name: b.gate("flight") for b in (b1, b2)}
        await send_request_head(client, "GET", "/gate/flight")
        busy = await first_to_arrive(gates)
        ctx.drain_backend(ctx.balancer.backends[busy])
        for i in range(4):
            async with http_client(port_of(ctx)) as other:
                assert (await other.request("GET", f"/hello/{i}")).status == 200
        gates[busy].release.set()
        reply = await client.response_head()
        reply.body = await client.read_body()
    assert (reply.status, reply.body) == (200, b"released /gate/flight\n")
    drained, kept = (b1, b2) if busy == "b1" else (b2, b1)
    assert [r.target for r in drained.requests] == ["/gate/flight"]
    assert [r.target for r in kept.requests] == [f"/hello/{i}" for i in range(4)]


async def first_to_arrive(gates: dict[str, Gate]) -> str:
    """The name of the first gate a request reaches."""
    arrived: list[str] = []
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            for name, gate in gates.items():
                tg.start_soon(_note_arrival, name, gate, arrived, tg.cancel_scope)
    return arrived[0]


async def _note_arrival(name: str, gate: Gate, arrived: list[str], scope: anyio.CancelScope
                        ) -> None:
    await gate.arrived.wait()
    arrived.append(name)
    scope.cancel()


# Metrics ---------------------------------------------------------------------------------------


async def test_metrics_count_http_requests_by_status_class() -> None:
    async with http_backend() as b, plain_proxy([b], http={"max_body_size": "1KiB"}) as ctx:
        async with http_client(port_of(ctx)) as client:
            for i in range(3):
                assert (await client.request("GET", f"/hello/{i}")).status == 200
            assert (await client.request("GET", "/status/404")).status == 404
        async with http_client(port_of(ctx)) as client:
            await client.send_head("POST", "/sink", [("Content-Length", "4096")])
            assert (await client.response_head()).status == 413  # the proxy's own
        async with http_client(port_of(ctx)) as client:
            gate = b.gate("active")
            await send_request_head(client, "GET", "/gate/active")
            with anyio.fail_after(WAIT):
                await gate.arrived.wait()
            during = (await admin(ctx, "GET", "/metrics")).body.decode()
            gate.release.set()
            assert (await client.response_head()).status == 200
            await client.read_body()
        text = (await admin(ctx, "GET", "/metrics")).body.decode()
    assert metric(during, "wsproxy_http_requests_active") == 1
    assert metric(text, "wsproxy_http_requests_total", status_class="2xx") == 4
    assert metric(text, "wsproxy_http_requests_total", status_class="4xx") == 2
    assert metric(text, "wsproxy_http_request_duration_seconds_count") == 6
    assert metric(text, "wsproxy_http_requests_active") == 0
    assert metric(text, "wsproxy_connections_total", outcome="http") >= 3
