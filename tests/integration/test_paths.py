"""A client's path cannot climb out of a backend's path prefix (issue 14), through a real
proxy in front of a real backend (tests/integration/http_backend.py, which records the
target of every request, WebSocket upgrades included).

The backend URL is ``ws://127.0.0.1:PORT/app``. Dot-segments are removed before the
prefix is joined; encodings a backend could decode into a dot-segment or a separator
get 400 and reach no backend. Raw sockets send the targets as they are (a client
library might clean them up first).
"""

from __future__ import annotations

import pytest

from tests.integration.http_backend import http_backend
from tests.integration.peers import make_config, raw_exchange, running_proxy, upgrade_request

pytestmark = pytest.mark.anyio

KINDS = ["websocket", "plain-http"]


def request(kind: str, target: str) -> bytes:
    if kind == "websocket":
        return upgrade_request(target)
    return f"GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode()


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("prefix", "target", "seen"),
    [
        ("/app", "/../admin", "/app/admin"),
        ("/app", "/a/./b/../../../admin?next=/../x", "/app/admin?next=/../x"),
        ("/app", "/..", "/app/"),
        ("", "/a/../b", "/b"),  # no prefix: the backend gets the normalised path too
    ],
)
async def test_dot_segments_stay_under_the_prefix(
    kind: str, prefix: str, target: str, seen: str
) -> None:
    async with http_backend() as b:
        config = make_config([{"name": b.name, "url": b.url + prefix}], plain_http="proxy")
        async with running_proxy(config) as ctx:
            answer = await raw_exchange(
                ctx.addresses[0][1], request(kind, target), read_until_eof=kind != "websocket"
            )
    assert status_of(answer) == (101 if kind == "websocket" else 404), answer
    assert [r.target for r in b.requests] == [seen]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "target",
    ["/%2e%2e/admin", "/.%2E/admin", "/a%2fb", "/a%5Cb", "/a\\b", "/..;/admin", "/a%00"],
)
async def test_ambiguous_encodings_get_400_and_reach_no_backend(kind: str, target: str) -> None:
    async with http_backend() as b:
        config = make_config([{"name": b.name, "url": b.url + "/app"}], plain_http="proxy")
        async with running_proxy(config) as ctx:
            answer = await raw_exchange(ctx.addresses[0][1], request(kind, target))
    assert status_of(answer) == 400, answer
    assert b.requests == []
    assert b.connections == []  # not even dialled
