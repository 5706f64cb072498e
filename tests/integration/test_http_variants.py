"""Plain HTTP (``plain_http: proxy``) on the listener's variants: TLS, PROXY headers, auth.

The backend is the built-in echo server, which answers a plain ``GET /`` with its
page (and 404 otherwise) and upgrades WebSockets: one server for both kinds of request.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme
from structlog.testing import capture_logs

from tests.integration.peers import make_config, raw_exchange, running_proxy
from wsproxy.echo import start_echo_server
from wsproxy.supervisor import ProxyContext

pytestmark = pytest.mark.anyio

GET = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n"
UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
KEY = "k3y-for-plain-http-tests"


@asynccontextmanager
async def http_proxy(**overrides: Any) -> AsyncIterator[ProxyContext]:
    server = await start_echo_server(name="page-backend")
    port = server.sockets[0].getsockname()[1]
    try:
        config = make_config([{"name": "b1", "url": f"ws://127.0.0.1:{port}"}],
                             plain_http="proxy", **overrides)
        async with running_proxy(config) as ctx:
            yield ctx
    finally:
        server.close()


def status_lines(answer: bytes) -> list[bytes]:
    return re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", answer)


async def test_plain_requests_then_an_upgrade_on_one_connection():
    async with http_proxy() as ctx:
        async with await anyio.connect_tcp("127.0.0.1", ctx.addresses[0][1]) as stream:
            await stream.send(GET + GET + UPGRADE)
            answer = b""
            with anyio.fail_after(5):
                while b"HTTP/1.1 101 " not in answer or not answer.endswith(b"\r\n\r\n"):
                    answer += await stream.receive()
            masked = bytes(a ^ b for a, b in zip(b"hi", b"ab", strict=True))
            await stream.send(b"\x81\x82abcd" + masked)  # "hi" under the mask "abcd"
            with anyio.fail_after(5):
                echo = await stream.receive()
        assert status_lines(answer) == [b"HTTP/1.1 200 OK"] * 2 + [
            b"HTTP/1.1 101 Switching Protocols"]
        assert b"page-backend" in answer
        assert echo == b"\x81\x02hi"  # the upgraded socket relays


async def test_tls_listener_serves_plain_requests(tmp_path: Path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    async with http_proxy(listen={"tls": {"certfile": str(certfile), "keyfile": str(keyfile)}}
                          ) as ctx:
        port = ctx.addresses[0][1]
        async with await anyio.connect_tcp("127.0.0.1", port, ssl_context=client,
                                           tls_standard_compatible=False) as stream:
            answers = b""
            with anyio.fail_after(5):
                for _ in range(2):  # keep-alive under TLS
                    await stream.send(GET)
                    while answers.count(b"</html>") < _ + 1:
                        answers += await stream.receive()
        assert status_lines(answers) == [b"HTTP/1.1 200 OK"] * 2
        assert b"Via: 1.1 wsproxy" in answers or b"via: 1.1 wsproxy" in answers


async def test_proxy_protocol_address_is_the_client_of_plain_requests():
    async with http_proxy(listen={"proxy_protocol": True}) as ctx:
        with capture_logs() as logs:
            answer = await raw_exchange(
                ctx.addresses[0][1],
                b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n" + GET.replace(
                    b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"),
            )
        assert status_lines(answer) == [b"HTTP/1.1 200 OK"]
        [line] = [e for e in logs if e["event"] == "http.request"]
        assert line["client"] == "203.0.113.7"


async def test_auth_applies_to_plain_requests(tmp_path: Path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"- {{sha256: {hashlib.sha256(KEY.encode()).hexdigest()}, subject: ci}}\n")
    auth = {"type": "api_key", "api_key": {"keys_file": str(keys)}, "token_from": ["header"]}
    async with http_proxy(auth=auth) as ctx:
        port = ctx.addresses[0][1]
        refused = await raw_exchange(port, GET)
        assert status_lines(refused) == [b"HTTP/1.1 401 Unauthorized"]
        assert b"www-authenticate" in refused.lower()
        allowed = await raw_exchange(port, GET.replace(
            b"\r\n\r\n", f"\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n".encode()))
        assert status_lines(allowed) == [b"HTTP/1.1 200 OK"]


async def test_the_proxy_s_own_probes_stay_its_own_on_a_keep_alive_connection():
    async with http_proxy() as ctx:
        answer = await raw_exchange(
            ctx.addresses[0][1],
            GET + b"GET /healthz HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        assert status_lines(answer) == [b"HTTP/1.1 200 OK"] * 2
        assert answer.endswith(b"ok\n")


@asynccontextmanager
async def answers_once_per_connection() -> AsyncIterator[tuple[int, list[int]]]:
    """A backend that answers the first request of each connection and closes at the
    second one unanswered: what a keep-alive timeout racing a reused connection looks
    like from the proxy. Yields its port and the number of requests each connection saw.
    """
    seen: list[int] = []

    async def serve(stream: anyio.abc.SocketStream) -> None:
        index = len(seen)
        seen.append(0)
        data = b""
        async with stream:
            while True:
                try:
                    data += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                while b"\r\n\r\n" in data:
                    _, data = data.split(b"\r\n\r\n", 1)
                    seen[index] += 1
                    if seen[index] > 1:
                        return  # closed without an answer
                    await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield listener.extra(anyio.abc.SocketAttribute.local_port), seen
        tg.cancel_scope.cancel()


async def test_a_reused_connection_closed_unanswered_is_retried_on_a_fresh_one():
    async with answers_once_per_connection() as (port, seen):
        config = make_config([{"name": "b1", "url": f"ws://127.0.0.1:{port}"}],
                             plain_http="proxy")
        async with running_proxy(config) as ctx:
            proxy_port = ctx.addresses[0][1]
            first = await raw_exchange(proxy_port, GET.replace(
                b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            second = await raw_exchange(proxy_port, GET.replace(
                b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    assert status_lines(first) == status_lines(second) == [b"HTTP/1.1 200 OK"]
    assert seen == [2, 1]  # the pooled connection got the second request, then a fresh one
