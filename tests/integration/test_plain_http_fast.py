"""The relay with plain heads read and written without h11 and the relay with h11 on
every head (``http_relay.FAST_HEADS`` off, as before the fast path) give the same bytes
to the backend and to the client, on real sockets, for plain exchanges and for the
ones the fast path hands to h11 (a chunked answer, a 1xx, obs-folds, HTTP/1.0...).

The backend answers each request it reads with the next canned response, written
raw; the client sends its requests, then a last one with ``Connection: close``, and
reads until the proxy closes. Each scenario is the second request on its connection:
the front door reads the first with h11 whatever the relay does.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import h11
import pytest
from anyio.abc import SocketStream

from tests.integration.test_plain_http import plain_proxy, port_of, raw
from wsproxy.io import http_relay

pytestmark = pytest.mark.anyio

#: A bound on the wait for the proxy's close (each scenario ends with one at once).
WITHIN = 10.0

FIRST = b"GET /first HTTP/1.1\r\nHost: app\r\n\r\n"
END = b"GET /end HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
END_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nend"
GET = b"GET /a?x=1 HTTP/1.1\r\nHost: app\r\nAccept: */*\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"

SCENARIOS: dict[str, tuple[bytes, list[bytes]]] = {
    "plain GET": (GET, [OK]),
    "a body both ways": (
        b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: 11\r\n\r\nhello world",
        [b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nSet-Cookie: a=b\r\n\r\nok"]),
    "HEAD": (b"HEAD / HTTP/1.1\r\nHost: app\r\n\r\n",
             [b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"]),
    "HEAD without a length": (b"HEAD / HTTP/1.1\r\nHost: app\r\n\r\n",
                              [b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n"]),
    "204": (GET, [b"HTTP/1.1 204 No Content\r\nX: y\r\n\r\n"]),
    "304": (GET, [b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\nETag: \"e\"\r\n\r\n"]),
    "a chunked answer": (GET, [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"5\r\nhello\r\n0\r\n\r\n"]),
    "a 1xx first": (GET, [b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n" + OK]),
    "hop-by-hop and Via": (
        b"GET / HTTP/1.1\r\nHost: app\r\nConnection: X-Hop\r\nX-Hop: 1\r\nVia: 1.1 lb\r\n\r\n",
        [b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Gone\r\nKeep-Alive: timeout=5\r\n"
         b"X-Gone: 1\r\nVia: 1.0 app\r\nContent-Length: 2\r\n\r\nhi"]),
    "the backend closes after": (GET, [b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                                       b"Content-Length: 2\r\n\r\nhi"]),
    "an HTTP/1.0 answer": (GET, [b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi"]),
    "an answer read to the close": (GET, [b"HTTP/1.0 200 OK\r\n\r\nuntil the close"]),
    "an obs-fold in the answer": (GET, [b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n"
                                        b"Content-Length: 2\r\n\r\nhi"]),
    "a bad answer": (GET, [b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"]),
    "no reason phrase": (GET, [b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nhi"]),
    "a Host in the answer": (GET, [b"HTTP/1.1 200 OK\r\nA: 1\r\nHost: h\r\n"
                                   b"Content-Length: 2\r\n\r\nhi"]),
    "HTTP/1.0 client": (b"GET / HTTP/1.0\r\nHost: app\r\n\r\n", [OK]),
    "Connection: close client": (b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
                                 [OK]),
    "pipelined": (GET + b"POST /p HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\n\r\nabc" + GET,
                  [OK, OK, OK]),
    "a chunked request, then a plain one": (
        b"POST /c HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n" + GET, [OK, OK]),
    "CL and TE": (b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\nabc", []),
    "two CLs": (b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\nContent-Length: 3\r\n"
                b"\r\nabc", []),
    "a bare LF": (b"GET / HTTP/1.1\nHost: app\r\n\r\n", []),
    "a space before the colon": (b"GET / HTTP/1.1\r\nHost : app\r\n\r\n", []),
    "a bad chunk size": (b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"zz\r\n", []),
    "a probe": (b"GET /healthz HTTP/1.1\r\nHost: app\r\n\r\n", []),
    "a body over max_body_size": (
        b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 99999\r\n\r\n", []),
}


class CannedBackend:
    """Answers each request it reads with the next of *answers* (then END_ANSWER)."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = list(answers)
        self.received: list[bytearray] = []
        self.port = 0

    async def serve(self, stream: SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        received = bytearray()
        self.received.append(received)
        async with stream:
            while True:
                try:
                    data = await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    break
                received += data
                conn.receive_data(data)
                while True:
                    try:
                        event = conn.next_event()
                    except h11.RemoteProtocolError:
                        break
                    if isinstance(event, h11.EndOfMessage):
                        answer = self.answers.pop(0) if self.answers else END_ANSWER
                        await stream.send(answer)
                        if b"close" in answer.split(b"\r\n\r\n")[0].lower() or (
                            answer.startswith(b"HTTP/1.0")
                        ):
                            return  # as a backend does after such an answer
                        rest, _ = conn.trailing_data
                        conn = h11.Connection(h11.SERVER)
                        if rest:  # (empty bytes would tell h11 of a close)
                            conn.receive_data(rest)
                    elif event is h11.NEED_DATA or event is h11.PAUSED:
                        break


@asynccontextmanager
async def canned_backend(answers: list[bytes]) -> AsyncIterator[CannedBackend]:
    backend = CannedBackend(answers)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    backend.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, backend.serve)
        yield backend
        tg.cancel_scope.cancel()


#: What differs from one run to the next: the request ids, the backend's port.
_VARYING = re.compile(rb"X-Request-Id: [^\r]*|127\.0\.0\.1:[0-9]+")


async def exchange(request: bytes, answers: list[bytes]) -> tuple[bytes, list[bytes]]:
    """What the client got, and what the backend got, per backend connection."""
    async with canned_backend([OK, *answers]) as backend:
        config = {"name": "b1", "url": f"ws://127.0.0.1:{backend.port}"}
        async with plain_proxy([config], http={"max_body_size": 1000}) as ctx:
            # The first request of a connection is read by the front door (h11): the
            # one under test comes second, where the relay reads heads itself.
            got, closed = await raw(port_of(ctx), FIRST + request + END, within=WITHIN)
            assert closed, got
        backend_got = [_VARYING.sub(b"-", bytes(r)) for r in backend.received]
    return got, backend_got


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
async def test_the_fast_path_forwards_what_h11_forwards(
    scenario: tuple[bytes, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    request, answers = scenario
    fast = await exchange(request, answers)
    monkeypatch.setattr(http_relay, "FAST_HEADS", False)
    assert await exchange(request, answers) == fast
