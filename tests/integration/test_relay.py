"""Through the proxy, end to end: `websockets` client -> wsproxy -> `websockets` backend."""

from __future__ import annotations

import os

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.peers import backend, make_config, proxy

pytestmark = pytest.mark.anyio


async def test_text_binary_fragmented_and_large_messages_round_trip() -> None:
    async with backend() as b, proxy(make_config([b])) as url, connect(url) as ws:
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        await ws.send(b"\x00\xff" * 50_000)
        assert await ws.recv() == b"\x00\xff" * 50_000
        await ws.send(["frag", "men", "ted"])
        assert await ws.recv() == "fragmented"
        for i in range(200):
            await ws.send(f"m{i}")
        assert [await ws.recv() for _ in range(200)] == [f"m{i}" for i in range(200)]


async def test_backend_sees_path_query_subprotocols_and_forwarding_headers() -> None:
    async with backend(subprotocols=["chat.v2"]) as b, proxy(make_config([b])) as url, connect(
        url + "/room/7?user=ann",
        subprotocols=["chat.v1", "chat.v2"],  # type: ignore[list-item]
        additional_headers={"X-Forwarded-For": "6.6.6.6", "X-Auth-Subject": "root",
                            "Cookie": "a=b"},
    ) as ws:
        assert ws.subprotocol == "chat.v2"
    path, headers = b.requests[0]
    assert path == "/room/7?user=ann"
    assert headers["X-Forwarded-For"] == "127.0.0.1"  # the spoofed value is gone
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"].startswith("127.0.0.1:")
    assert len(headers["X-Request-Id"]) == 12
    assert "X-Auth-Subject" not in headers
    assert headers["Cookie"] == "a=b"
    assert headers.get_all("Sec-WebSocket-Protocol") == ["chat.v1, chat.v2"]


@pytest.mark.parametrize("code", [1000, 1001, 4001])
async def test_client_close_code_and_reason_reach_the_backend(code: int) -> None:
    async with backend() as b, proxy(make_config([b])) as url:
        async with connect(url) as ws:
            await ws.send("x")
            await ws.recv()
            await ws.close(code, "bye now")
        server_side = b.connections[0]
        await server_side.wait_closed()
        assert server_side.close_code == code
        assert server_side.close_reason == "bye now"
        assert ws.close_code == code  # the backend's echo came back through


async def test_backend_close_code_and_reason_reach_the_client() -> None:
    async def close_at_once(ws: ServerConnection) -> None:
        await ws.close(4002, "backend says bye")

    async with (
        backend(handler=close_at_once) as b,
        proxy(make_config([b])) as url,
        connect(url) as ws,
    ):
        with pytest.raises(ConnectionClosed) as exc:
            await ws.recv()
    assert exc.value.rcvd is not None
    assert (exc.value.rcvd.code, exc.value.rcvd.reason) == (4002, "backend says bye")


async def test_pings_are_relayed_end_to_end() -> None:
    async with backend() as b, proxy(make_config([b])) as url, connect(url) as ws:
        pong = await ws.ping(b"client-ping")
        await pong  # answered by the backend: the proxy relays, it does not answer
        server_side = b.connections[0]
        pong = await server_side.ping(b"server-ping")
        await pong


async def test_unreachable_backend_is_skipped_for_the_next_one() -> None:
    dead = {"name": "dead", "url": "ws://127.0.0.1:1"}
    async with backend("alive") as b:
        live = {"name": b.name, "url": b.url}
        config = make_config([dead, live], balance="round_robin")
        async with proxy(config) as url:
            for _ in range(4):  # round robin would pick "dead" half the time
                async with connect(url) as ws:
                    await ws.send("ok")
                    assert await ws.recv() == "ok"


async def test_no_reachable_backend_answers_502() -> None:
    config = make_config([{"name": "dead", "url": "ws://127.0.0.1:1"}])
    async with proxy(config) as url:
        with pytest.raises(InvalidStatus) as exc:
            async with connect(url):
                pass
    assert exc.value.response.status_code == 502


async def test_backend_refusal_status_is_passed_to_the_client() -> None:
    async def refuse(connection: ServerConnection, request: object) -> object:
        return connection.respond(403, "no\n")

    async with backend(process_request=refuse) as b, proxy(make_config([b])) as url:
        with pytest.raises(InvalidStatus) as exc:
            async with connect(url):
                pass
    assert exc.value.response.status_code == 403


@pytest.mark.parametrize("direction", ["to_backend", "to_client"])
async def test_message_over_the_limit_closes_with_1009(direction: str) -> None:
    # Random bytes: under permessage-deflate the limit applies to wire bytes.
    big = os.urandom(5000)

    async def send_big(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(big)
        await ws.wait_closed()

    handler = send_big if direction == "to_client" else None
    kwargs = {"handler": handler} if handler else {}
    async with backend(**kwargs) as b:  # type: ignore[arg-type]
        config = make_config([b], limits={"max_message_size": 4096})
        async with proxy(config) as url, connect(url) as ws:
            await ws.send(big if direction == "to_backend" else b"small")
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 1009
        await b.connections[0].wait_closed()
        assert b.connections[0].close_code == 1009


async def test_round_robin_alternates_and_hash_sticks() -> None:
    async with backend("one") as b1, backend("two") as b2:
        async with proxy(make_config([b1, b2], balance="round_robin")) as url:
            for _ in range(4):
                async with connect(url):
                    pass
        assert (len(b1.requests), len(b2.requests)) == (2, 2)
        async with proxy(make_config([b1, b2], balance="hash:room")) as url:
            for _ in range(4):
                async with connect(url + "/?room=42"):
                    pass
        assert sorted((len(b1.requests), len(b2.requests))) == [2, 6]


async def test_least_connections_prefers_the_idle_backend() -> None:
    async with backend("one") as b1, backend("two") as b2:
        async with proxy(make_config([b1, b2])) as url, connect(url) as held:
            await held.send("x")
            await held.recv()
            for _ in range(3):
                async with connect(url):
                    pass
        busy, idle = (b1, b2) if len(b1.requests) == 1 else (b2, b1)
        assert (len(busy.requests), len(idle.requests)) == (1, 3)
