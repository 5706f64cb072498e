"""Authentication over real sockets on 127.0.0.1.

First the authenticators against real HTTP services (a forward auth service, a JWKS
server) served here with h11 on anyio; then the proxy itself with ``auth.type:
api_key`` in front of a `websockets` backend. Keys and tokens are made here, never
committed; no token may appear in a log line or the output.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import h11
import jwt
import pytest
import trustme
from anyio.streams.tls import TLSListener
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from structlog.testing import capture_logs
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.integration.peers import backend, make_config, proxy
from tests.unit.test_auth_sources import upgrade
from wsproxy.auth import AuthFailed, Credentials, Identity
from wsproxy.auth.factory import build_authenticator
from wsproxy.auth.forward import ForwardAuthenticator
from wsproxy.auth.http import HttpError, http_get
from wsproxy.auth.jwks import JwksUrl
from wsproxy.auth.jwt import JwtAuthenticator
from wsproxy.config import AuthConfig, ForwardAuthConfig, JwtAuthConfig

pytestmark = pytest.mark.anyio

#: (status, headers, body) to answer, or None to close without an answer.
Answer = tuple[int, list[tuple[str, str]], bytes] | None
Handler = Callable[[h11.Request], Awaitable[Answer]]


@dataclass
class Service:
    """An HTTP service on 127.0.0.1; ``requests`` keeps every request it got."""

    url: str
    requests: list[h11.Request] = field(default_factory=list)

    def headers(self, i: int = -1) -> dict[bytes, bytes]:
        return {bytes(k): bytes(v) for k, v in self.requests[i].headers}


def answer(status: int, *headers: tuple[str, str], body: bytes = b"") -> Handler:
    async def handler(request: h11.Request) -> Answer:
        return status, list(headers), body

    return handler


@asynccontextmanager
async def http_service(handler: Handler, path: str = "/auth") -> AsyncIterator[Service]:
    """Serve *handler*, one request per connection, until the block ends."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    service = Service(url=f"http://127.0.0.1:{port}{path}")

    async def serve_one(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            conn = h11.Connection(h11.SERVER)
            while (event := conn.next_event()) is h11.NEED_DATA:
                try:
                    conn.receive_data(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
            assert isinstance(event, h11.Request)
            service.requests.append(event)
            reply = await handler(event)
            if reply is None:
                return
            status, headers, body = reply
            head = [*headers, ("Content-Length", str(len(body)))]
            try:
                await stream.send(conn.send(h11.Response(status_code=status, headers=head)))
                await stream.send(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return  # the client gave up first (a timeout test)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve_one)
        try:
            yield service
        finally:
            tg.cancel_scope.cancel()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A URL whose port is held by a socket that does not listen: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/auth"


async def hang(request: h11.Request) -> Answer:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


# The HTTP client…


async def test_http_get_reads_status_headers_and_body():
    async with http_service(answer(200, ("X-A", "1"), ("X-A", "2"), body=b"hello")) as svc:
        reply = await http_get(svc.url + "?q=1", [(b"X-Mine", b"yes")])
    assert (reply.status, reply.header(b"x-a"), reply.body) == (200, b"1, 2", b"hello")
    request = svc.requests[0]
    assert request.target == b"/auth?q=1"
    assert svc.headers()[b"x-mine"] == b"yes"
    assert svc.headers()[b"connection"] == b"close"


async def test_http_get_refuses_a_body_over_the_cap():
    async with http_service(answer(200, body=b"x" * 5000)) as svc:
        with pytest.raises(HttpError, match="body over 1000"):
            await http_get(svc.url, max_body=1000)


async def test_http_get_maps_a_refused_connection(refused_url: str):
    with pytest.raises(HttpError, match="ConnectionRefused"):
        await http_get(refused_url)


async def test_http_get_maps_a_connection_closed_without_answer():
    async def close(request: h11.Request) -> Answer:
        return None

    async with http_service(close) as svc:
        with pytest.raises(HttpError):
            await http_get(svc.url)


@asynccontextmanager
async def raw_service(reply: bytes) -> AsyncIterator[str]:
    """A server that reads a request head and sends *reply* as it is; yields its URL."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve_one(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            received = b""
            while b"\r\n\r\n" not in received:
                received += await stream.receive()
            await stream.send(reply)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve_one)
        yield f"http://127.0.0.1:{port}/"
        tg.cancel_scope.cancel()


async def test_http_get_waits_past_an_informational_answer():
    reply = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with raw_service(reply) as url:
        answer_ = await http_get(url)
    assert (answer_.status, answer_.body) == (200, b"ok")


async def test_http_get_maps_a_garbled_answer():
    async with raw_service(b"SSH-2.0-OpenSSH_9.6\r\n\r\n") as url:
        with pytest.raises(HttpError, match="invalid HTTP exchange"):
            await http_get(url)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "http:///nohost", "127.0.0.1:80"])
async def test_http_get_refuses_what_is_no_http_url(url: str):
    with pytest.raises(HttpError, match="not an http"):
        await http_get(url)


async def test_http_get_over_https():
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = tcp.extra(anyio.abc.SocketAttribute.local_port)
    listener = TLSListener(tcp, server_context, standard_compatible=False)

    async def serve_one(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            await stream.receive()
            await stream.send(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve_one)
        reply = await http_get(f"https://127.0.0.1:{port}/", ssl_context=client_context)
        tg.cancel_scope.cancel()
    assert reply.status == 204


# Forward auth…


def forward(url: str, *, timeout: float = 2.0, copy: tuple[str, ...] = ()) -> ForwardAuthenticator:
    config = ForwardAuthConfig(url=url, timeout=timeout, copy_headers=copy)
    built = build_authenticator(AuthConfig(type="forward", forward=config))
    assert isinstance(built, ForwardAuthenticator)
    return built


TOKEN = "fwd-secret-token-0123456789"
CLIENT = upgrade(
    "/chat?room=1", ("Authorization", f"Bearer {TOKEN}"), ("Sec-WebSocket-Protocol", "chat"),
    ("X-Forwarded-For", "6.6.6.6"),
)


async def ask(auth: ForwardAuthenticator) -> Identity:
    return await auth.authenticate(CLIENT, Credentials(token=TOKEN, source="header"), "10.9.8.7")


async def ask_refused(auth: ForwardAuthenticator) -> AuthFailed:
    with pytest.raises(AuthFailed) as caught:
        await ask(auth)
    return caught.value


async def test_forward_allows_with_subject_and_copy_headers():
    reply = answer(
        200, ("X-Auth-Subject", "alice"), ("X-User-Id", "42"), ("X-Org", "acme"),
        ("X-Not-Copied", "no"),
    )
    async with http_service(reply) as svc:
        identity = await ask(forward(svc.url, copy=("X-User-Id", "X-Org", "X-Absent")))
    assert identity == Identity(subject="alice", headers=(("X-User-Id", "42"), ("X-Org", "acme")))
    sent = svc.headers()
    assert sent[b"authorization"] == f"Bearer {TOKEN}".encode()
    assert sent[b"x-forwarded-uri"] == b"/chat?room=1"
    assert sent[b"x-forwarded-host"] == b"proxy.example"
    assert sent[b"x-forwarded-for"] == b"10.9.8.7"  # not the client's spoof
    assert sent[b"host"] == svc.url.split("/")[2].encode()
    assert not any(name.startswith(b"sec-websocket") for name in sent)
    assert b"upgrade" not in sent
    assert svc.requests[0].method == b"GET"


@pytest.mark.parametrize(
    ("headers", "subject"),
    [
        ([("Remote-User", "bob")], "bob"),
        ([("X-Auth-Request-User", "carol")], "carol"),
        ([("X-Auth-Subject", "alice"), ("Remote-User", "bob")], "alice"),
        ([], "anonymous"),
        ([("X-Auth-Subject", "")], "anonymous"),
    ],
)
async def test_forward_subject(headers: list[tuple[str, str]], subject: str):
    async with http_service(answer(204, *headers)) as svc:
        assert (await ask(forward(svc.url))).subject == subject


@pytest.mark.parametrize(
    ("value", "subject"), [("Zoë".encode(), "Zoë"), (b"J\xf6rg", "Jörg"), (b"a\x7fb", "anonymous")]
)
async def test_forward_subject_bytes(value: bytes, subject: str):
    async def reply(request: h11.Request) -> Answer:
        return 200, [("X-Auth-Subject", value)], b""  # type: ignore[list-item]

    async with http_service(reply) as svc:
        assert (await ask(forward(svc.url))).subject == subject


async def test_forward_401_passes_the_services_challenge():
    reply = answer(401, ("WWW-Authenticate", 'Basic realm="corp"'), body=b"secret page")
    async with http_service(reply) as svc:
        failure = await ask_refused(forward(svc.url))
    assert (failure.status, failure.reason) == (401, "unauthorized")
    assert failure.headers == (("WWW-Authenticate", 'Basic realm="corp"'),)


async def test_forward_401_without_a_challenge_gets_ours():
    async with http_service(answer(401)) as svc:
        failure = await ask_refused(forward(svc.url))
    assert failure.headers == (("WWW-Authenticate", 'Bearer realm="wsproxy"'),)


async def test_forward_refusing_403():
    async with http_service(answer(403)) as svc:
        failure = await ask_refused(forward(svc.url))
    assert (failure.status, failure.reason, failure.headers) == (403, "forbidden", ())


@pytest.mark.parametrize("status", [500, 502, 302, 404, 429])
async def test_forward_other_statuses_are_503(status: int):
    async with http_service(answer(status, ("Location", "/login"))) as svc:
        with capture_logs() as logs:
            failure = await ask_refused(forward(svc.url))
    assert (failure.status, failure.reason) == (503, "auth_unavailable")
    assert logs[0]["event"] == "auth.forward_failed"


async def test_forward_service_down_is_503(refused_url: str):
    with capture_logs() as logs:
        failure = await ask_refused(forward(refused_url))
    assert (failure.status, failure.reason) == (503, "auth_unavailable")
    assert "ConnectionRefused" in logs[0]["error"]


async def test_forward_service_slow_is_503_at_the_timeout():
    async with http_service(hang) as svc:
        with capture_logs() as logs, anyio.fail_after(10):  # a ceiling: it would hang
            started = anyio.current_time()
            failure = await ask_refused(forward(svc.url, timeout=0.3))
            elapsed = anyio.current_time() - started
    assert (failure.status, failure.reason) == (503, "auth_unavailable")
    assert elapsed >= 0.3  # not before the timeout; its log line names the one applied
    assert logs[0]["error"] == "no answer within 0.3s"


async def test_forward_service_closing_without_answer_is_503():
    async def close(request: h11.Request) -> Answer:
        return None

    async with http_service(close) as svc:
        assert (await ask_refused(forward(svc.url))).status == 503


# JWT with a JWKS URL…


def jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    return {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid}


def jwks_handler(keys: list[dict[str, Any]]) -> Handler:
    async def handler(request: h11.Request) -> Answer:
        body = json.dumps({"keys": keys}).encode()
        return 200, [("Content-Type", "application/json")], body

    return handler


def es256_token(key: ec.EllipticCurvePrivateKey, kid: str, sub: str = "dave") -> str:
    return jwt.encode({"sub": sub}, key, algorithm="ES256", headers={"kid": kid})


async def verify(auth: JwtAuthenticator, token: str) -> Identity:
    return await auth.authenticate(CLIENT, Credentials(token=token), "127.0.0.1")


async def test_jwks_url_is_fetched_once_and_cached():
    key = ec.generate_private_key(ec.SECP256R1())
    async with http_service(jwks_handler([jwk(key, "k1")]), "/jwks") as svc:
        auth = build_authenticator(
            AuthConfig(type="jwt", jwt=JwtAuthConfig(algorithms=("ES256",), jwks_url=svc.url))
        )
        assert isinstance(auth, JwtAuthenticator)
        assert svc.requests == []  # not at build time
        for _ in range(3):
            assert (await verify(auth, es256_token(key, "k1"))).subject == "dave"
    assert len(svc.requests) == 1
    assert svc.headers()[b"accept"] == b"application/json"


async def test_jwks_url_unknown_kid_then_refresh_finds_it():
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    keys = [jwk(old, "old")]
    async with http_service(jwks_handler(keys), "/jwks") as svc:
        source = JwksUrl(svc.url, min_interval=0)
        auth = JwtAuthenticator(JwtAuthConfig(algorithms=("ES256",), jwks_url=svc.url), source)
        assert (await verify(auth, es256_token(old, "old"))).subject == "dave"
        keys.append(jwk(new, "new"))  # the issuer rotates in a key
        assert (await verify(auth, es256_token(new, "new", "erin"))).subject == "erin"
        with pytest.raises(AuthFailed) as caught:
            await verify(auth, es256_token(new, "forged-kid"))
    assert (caught.value.status, caught.value.reason) == (401, "unknown_key")
    assert len(svc.requests) == 3  # first load, "new", "forged-kid"


async def test_jwks_url_unknown_kid_is_not_refetched_within_30s():
    key = ec.generate_private_key(ec.SECP256R1())
    async with http_service(jwks_handler([jwk(key, "k1")]), "/jwks") as svc:
        auth = build_authenticator(
            AuthConfig(type="jwt", jwt=JwtAuthConfig(algorithms=("ES256",), jwks_url=svc.url))
        )
        assert isinstance(auth, JwtAuthenticator)
        for kid in ("a", "b", "c"):
            with pytest.raises(AuthFailed, match="unknown_key"):
                await verify(auth, es256_token(key, kid))
    assert len(svc.requests) == 1


async def test_jwks_url_down_is_503(refused_url: str):
    auth = build_authenticator(
        AuthConfig(type="jwt", jwt=JwtAuthConfig(algorithms=("ES256",), jwks_url=refused_url))
    )
    assert isinstance(auth, JwtAuthenticator)
    key = ec.generate_private_key(ec.SECP256R1())
    with capture_logs() as logs, pytest.raises(AuthFailed) as caught:
        await verify(auth, es256_token(key, "k1"))
    assert (caught.value.status, caught.value.reason) == (503, "auth_unavailable")
    assert logs[0]["event"] == "auth.jwks_fetch_failed"


async def test_jwks_url_slow_is_503_at_the_timeout():
    async with http_service(hang, "/jwks") as svc:
        source = JwksUrl(svc.url, timeout=0.3)
        auth = JwtAuthenticator(JwtAuthConfig(algorithms=("ES256",), jwks_url=svc.url), source)
        key = ec.generate_private_key(ec.SECP256R1())
        with pytest.raises(AuthFailed) as caught:
            await verify(auth, es256_token(key, "k1"))
    assert caught.value.status == 503


async def test_no_token_in_the_logs_of_the_services_tests(
    refused_url: str, capsys: pytest.CaptureFixture[str]
):
    key = ec.generate_private_key(ec.SECP256R1())
    token = es256_token(key, "k1")
    with capture_logs() as logs:
        for handler in (answer(500), answer(401), hang):
            async with http_service(handler) as svc:
                failure = await ask_refused(forward(svc.url, timeout=0.2))
                assert TOKEN not in f"{failure} {failure.message} {failure.headers}"
        await ask_refused(forward(refused_url))
        auth = JwtAuthenticator(
            JwtAuthConfig(algorithms=("ES256",), jwks_url=refused_url), JwksUrl(refused_url)
        )
        with pytest.raises(AuthFailed):
            await verify(auth, token)
    text = repr(logs) + "".join(capsys.readouterr())
    assert TOKEN not in text
    assert token.split(".")[1] not in text
    assert token.split(".")[2] not in text


# Through the proxy (auth.type api_key)…


KEY = "proxy-api-key-0123456789abcdef"


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(f"- {{sha256: {hashlib.sha256(KEY.encode()).hexdigest()}, subject: ci}}\n")
    return path


def auth_config(b: Any, keys_file: Path, token_from: list[str] | None = None) -> Any:
    auth: dict[str, Any] = {"type": "api_key", "api_key": {"keys_file": str(keys_file)}}
    if token_from is not None:
        auth["token_from"] = token_from
    return make_config([b], auth=auth)


async def test_proxy_a_good_key_reaches_the_backend_with_its_subject(keys_file: Path):
    async with (
        backend() as b,
        proxy(auth_config(b, keys_file)) as url,
        connect(url + "/chat", additional_headers={
            "Authorization": f"Bearer {KEY}", "X-Auth-Subject": "root"
        }) as ws,
    ):
        await ws.send("hi")
        assert await ws.recv() == "hi"
    path, headers = b.requests[0]
    assert headers.get_all("X-Auth-Subject") == ["ci"]  # the client's copy is gone
    assert KEY not in f"{path} {headers}"


async def test_proxy_a_query_token_is_removed_before_the_backend(keys_file: Path):
    async with backend() as b:
        config = auth_config(b, keys_file, ["query:token"])
        async with proxy(config) as url, connect(f"{url}/chat?a=1&token={KEY}&b=2") as ws:
            await ws.send("x")
            await ws.recv()
    path, headers = b.requests[0]
    assert path == "/chat?a=1&b=2"
    assert headers["X-Auth-Subject"] == "ci"


async def test_proxy_a_subprotocol_token_is_answered_and_removed(keys_file: Path):
    async with (
        backend() as b,
        proxy(auth_config(b, keys_file, ["subprotocol"])) as url,
        connect(url, subprotocols=[f"bearer.{KEY}"]) as ws,  # type: ignore[list-item]
    ):
        # The backend chose none: the 101 selects the auth entry, as browsers need.
        assert ws.subprotocol == f"bearer.{KEY}"
        await ws.send("x")
        assert await ws.recv() == "x"
    _, headers = b.requests[0]
    assert KEY not in str(headers)
    assert headers["X-Auth-Subject"] == "ci"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [({}, "missing"), ({"Authorization": "Bearer wrong-key-zzzz"}, "invalid")],
)
async def test_proxy_a_missing_or_bad_key_is_401_and_no_backend_is_contacted(
    keys_file: Path, headers: dict[str, str], reason: str, capsys: pytest.CaptureFixture[str]
):
    attempts: list[object] = []

    def seen(connection: object, request: object) -> None:
        attempts.append(request)  # every handshake the backend is sent, even refused ones

    with capture_logs() as logs:
        async with (
            backend(process_request=seen) as b,
            proxy(auth_config(b, keys_file)) as url,
        ):
            with pytest.raises(InvalidStatus) as caught:
                async with connect(url, additional_headers=headers):
                    pass
    response = caught.value.response
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="wsproxy"')
    assert attempts == []
    text = repr(logs) + "".join(capsys.readouterr())
    assert "wrong-key-zzzz" not in text


async def test_proxy_the_canonical_log_lines_name_the_authenticated_subject(keys_file: Path):
    headers = {"Authorization": f"Bearer {KEY}"}
    with capture_logs() as logs:
        async with (
            backend() as b,
            proxy(auth_config(b, keys_file)) as url,
            connect(url, additional_headers=headers) as ws,
        ):
            await ws.send("hi")
            assert await ws.recv() == "hi"
    lines = {e["event"]: e for e in logs if e["event"].startswith("connection.")}
    assert lines["connection.opened"]["subject"] == "ci"
    assert lines["connection.closed"]["subject"] == "ci"
