"""No token byte reaches a backend, whichever source won (issue 14).

A client may send several credentials: a fresh header next to a stale cookie, an old
link's query token. Only the first found is checked, but every configured source the
request holds must be removed before the backend sees it. The matrix here takes
every combination of

    auth type        api_key, jwt, forward
    token_from       SOURCES as listed, and reversed
    request          WebSocket, plain HTTP
    the winner       each source in turn

against one real backend that records every byte it receives (the request head and,
for a WebSocket, the frames). In each case the winning source holds a valid token and
then a stale one, and every source after it in ``token_from`` holds two more (the
first valid for another subject, the second not); none of their bytes may reach the
backend, while the client's other query parameters, cookies and subprotocol offers
arrive byte for byte. A plain HTTP request has no subprotocol offers to win with, but
its ``Sec-WebSocket-Protocol`` header is a credential all the same: it is sent in every
plain case.

The proxies (one per auth type and order) are started once for the module.
"""

from __future__ import annotations

import hashlib
import secrets
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import h11
import jwt
import pytest
import trustme
from anyio.abc import ByteStream, SocketAttribute, SocketStream
from websockets.asyncio.client import connect

from tests.integration.http_backend import HttpBackend, http_client
from tests.integration.peers import make_config, running_proxy
from tests.integration.test_auth import Answer, Service, http_service

pytestmark = pytest.mark.anyio

SOURCES = ["header", "header:X-Token", "query:access_token", "cookie:access_token", "subprotocol"]
ORDERS = {"listed": SOURCES, "reversed": SOURCES[::-1]}
AUTH_TYPES = ["api_key", "jwt", "forward"]
TAG = {
    "header": "authz", "header:X-Token": "xtoken", "query:access_token": "query",
    "cookie:access_token": "cookie", "subprotocol": "subproto",
}
RUN = secrets.token_hex(6)  # makes every token of this run unique
SECRET = secrets.token_hex(32)  # HS256 needs at least 32 bytes
ORIGIN = "http://app.example"
#: What the backend must get whatever the credentials: the client's other parameters
#: (one with a percent-encoded value), cookies and subprotocol offers, as they were sent.
TARGET = "/hello/x?a=1&b=%41+2&c"
COOKIES = ["theme=dark;lang=en-GB", 'z="q r"']
OFFER = "chat"


def token(auth: str, source: str, nth: int) -> str:
    """The *nth* (0 or 1) token the client puts in *source*: the first one validates
    (for the subject TAG[source]), the second does not."""
    tag = TAG[source]
    if auth == "jwt":  # the second one is signed with another secret
        key = SECRET if nth == 0 else SECRET[::-1]
        return jwt.encode({"sub": tag, "jti": f"{RUN}-{nth}"}, key, algorithm="HS256")
    if auth == "api_key":  # the keys file lists the first ones
        return f"{('key', 'stale')[nth]}-{tag}-{RUN}"
    return f"{('fwd', 'old')[nth]}-{tag}-{RUN}"  # the forward auth service allows "fwd-"


@dataclass
class Case:
    """One client request: where its tokens are, and what it sends."""

    auth: str
    websocket: bool
    #: The configured sources the request holds, the winner first.
    present: list[str]

    def tokens(self) -> list[str]:
        return [token(self.auth, s, n) for s in self.present for n in (0, 1)]

    def target(self) -> str:
        path, _, query = TARGET.partition("?")
        params = query.split("&")
        if "query:access_token" in self.present:
            first, second = (token(self.auth, "query:access_token", n) for n in (0, 1))
            # The second copy with its name percent-encoded: a name is a name.
            params[1:1] = [f"access_token={first}"]
            params.append(f"access%5Ftoken={second}")
        return f"{path}?{'&'.join(params)}"

    def headers(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = [("Origin", ORIGIN)]
        cookies = list(COOKIES)
        for source in self.present:
            first, second = (token(self.auth, source, n) for n in (0, 1))
            if source == "header":
                out += [("Authorization", f"Bearer {first}"), ("Authorization", f"bearer {second}")]
            elif source == "header:X-Token":
                out += [("X-Token", first), ("X-Token", second)]
            elif source == "cookie:access_token":
                a, b = cookies[0].split(";")
                cookies = [f"{a}; access_token={first};{b}", f"access_token={second}; {cookies[1]}"]
        out += [("Cookie", c) for c in cookies]
        if not self.websocket:  # the plain request's offers, as a header
            out += [("Sec-WebSocket-Protocol", ", ".join(self.offers()))]
        return out

    def offers(self) -> list[str]:
        if "subprotocol" not in self.present:
            return [OFFER]
        return [f"bearer.{token(self.auth, 'subprotocol', 0)}", OFFER,
                f"bearer.{token(self.auth, 'subprotocol', 1)}"]


def cases() -> Iterator[Any]:
    for auth in AUTH_TYPES:
        for order_name, order in ORDERS.items():
            for websocket in (True, False):
                for i, winner in enumerate(order):
                    if winner == "subprotocol" and not websocket:
                        continue  # a plain request offers no subprotocol to win with
                    present = order[i:]
                    if not websocket and "subprotocol" not in present:
                        present = [*present, "subprotocol"]
                    kind = "ws" if websocket else "http"
                    yield pytest.param(
                        order_name, Case(auth, websocket, present),
                        id=f"{auth}-{order_name}-{kind}-{TAG[winner]}",
                    )


# The backend that records every byte…


class Recorded(ByteStream):
    """A socket stream that appends every byte it receives to *into*."""

    def __init__(self, stream: SocketStream, into: bytearray) -> None:
        self._stream = stream
        self._into = into

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self._stream.receive(max_bytes)
        self._into += data
        return data

    async def send(self, item: bytes) -> None:
        await self._stream.send(item)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()

    @property
    def extra_attributes(self) -> Any:
        return self._stream.extra_attributes


@asynccontextmanager
async def recording_backend(into: bytearray) -> AsyncIterator[HttpBackend]:
    """tests.integration.http_backend's app server, every received byte kept in *into*."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    app = HttpBackend("rec", listener.extra(SocketAttribute.local_port))

    async def serve(stream: SocketStream) -> None:
        await app.serve_connection(Recorded(stream, into))  # type: ignore[arg-type]

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        try:
            yield app
        finally:
            tg.cancel_scope.cancel()


async def forward_auth(request: h11.Request) -> Answer:
    """Allows a request that carries a valid ("fwd-") token anywhere."""
    values = [v for _, v in request.headers]
    if any(b"fwd-" in v for v in values):
        return 200, [("X-Auth-Subject", "fwd-user")], b""
    return 401, [], b""


# The proxies, one per auth type and order…


@dataclass
class Rig:
    received: bytearray
    ports: dict[tuple[str, str], int]
    forward_service: Service


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys.write_text("".join(
        f"- {{sha256: {hashlib.sha256(token('api_key', s, 0).encode()).hexdigest()}, "
        f"subject: {TAG[s]}}}\n" for s in SOURCES
    ))
    received = bytearray()
    async with AsyncExitStack() as stack:
        app = await stack.enter_async_context(recording_backend(received))
        service = await stack.enter_async_context(http_service(forward_auth))
        auths: dict[str, dict[str, Any]] = {
            "api_key": {"type": "api_key", "api_key": {"keys_file": str(keys)}},
            "jwt": {"type": "jwt", "jwt": {"algorithms": ["HS256"], "secret": SECRET}},
            "forward": {"type": "forward", "forward": {"url": service.url, "timeout": "10s"}},
        }
        ports = {}
        for auth, settings in auths.items():
            for order_name, order in ORDERS.items():
                config = make_config(
                    [{"name": "rec", "url": app.url}], plain_http="proxy",
                    allowed_origins=[ORIGIN], auth={**settings, "token_from": order},
                )
                ctx = await stack.enter_async_context(running_proxy(config))
                ports[auth, order_name] = ctx.addresses[0][1]
        yield Rig(received, ports, service)


# The matrix…


@dataclass
class Head:
    target: bytes
    headers: list[tuple[bytes, bytes]]  # names lower-cased

    def all(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


def first_head(data: bytes) -> Head:
    head, found, _ = data.partition(b"\r\n\r\n")
    assert found, data
    request_line, *lines = head.split(b"\r\n")
    headers = [(k.strip().lower(), v.strip()) for k, _, v in (ln.partition(b":") for ln in lines)]
    return Head(request_line.split(b" ")[1], headers)


async def send(port: int, case: Case) -> None:
    """The case's request through the proxy; a WebSocket sends a message both ways."""
    if case.websocket:
        async with connect(
            f"ws://127.0.0.1:{port}{case.target()}", additional_headers=case.headers(),
            subprotocols=case.offers(),  # type: ignore[arg-type]
        ) as ws:
            await ws.send("frames too")
            assert await ws.recv() == "frames too"
        return  # the close handshake is done: the backend has every byte
    async with http_client(port) as client:
        reply = await client.request("GET", case.target(), case.headers())
    assert reply.status == 200, reply


@pytest.mark.parametrize(("order", "case"), list(cases()))
async def test_no_token_byte_reaches_the_backend(rig: Rig, order: str, case: Case) -> None:
    start = len(rig.received)
    asked = len(rig.forward_service.requests)
    await send(rig.ports[case.auth, order], case)
    received = bytes(rig.received[start:])
    for sent in case.tokens():
        # The whole token, and its tail on its own (a half-cut one is a leak as well).
        assert sent.encode() not in received, (sent, received)
        assert sent[-16:].encode() not in received, (sent, received)
    head = first_head(received)
    assert head.target == TARGET.encode()
    assert head.all(b"cookie") == [c.encode() for c in COOKIES]
    assert head.all(b"sec-websocket-protocol") == [OFFER.encode()]
    assert head.all(b"authorization") == head.all(b"x-token") == []
    subject = "fwd-user" if case.auth == "forward" else TAG[case.present[0]]
    assert head.all(b"x-auth-subject") == [subject.encode()]
    if case.websocket:
        assert received.partition(b"\r\n\r\n")[2], "the frames are recorded too"
    if case.auth == "forward":
        asked_now = rig.forward_service.requests[asked:]
        assert [dict(r.headers)[b"x-forwarded-proto"] for r in asked_now] == [b"http"]


# Forward auth behind a TLS listener…


async def test_forward_auth_is_told_https_behind_a_tls_listener(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "proxy.pem", tmp_path / "proxy.key"
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    received = bytearray()
    async with (
        recording_backend(received) as app,
        http_service(forward_auth) as service,
        running_proxy(make_config(
            [{"name": "rec", "url": app.url}],
            listen={"tls": {"certfile": str(certfile), "keyfile": str(keyfile)}},
            auth={"type": "forward", "forward": {"url": service.url, "timeout": "10s"}},
        )) as ctx,
        connect(
            f"wss://127.0.0.1:{ctx.addresses[0][1]}/", ssl=client_context,
            additional_headers={"Authorization": f"Bearer fwd-{RUN}", "X-Forwarded-Proto": "http"},
        ) as ws,
    ):
        await ws.send("over tls")
        assert await ws.recv() == "over tls"
    assert dict(service.requests[0].headers)[b"x-forwarded-proto"] == b"https"
    assert first_head(bytes(received)).all(b"x-forwarded-proto") == [b"https"]
