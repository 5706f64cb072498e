"""The client's upgrade through a real proxy: the answers before the upgrade (SPEC.md,
"Answers before the upgrade"), the limits, origins, compression and forwarding keys.
"""

from __future__ import annotations

import anyio
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.integration.peers import backend, make_config, proxy, raw_exchange, upgrade_request

pytestmark = pytest.mark.anyio


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _status_and_headers(answer: bytes) -> tuple[int, dict[str, str]]:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status_line, *lines = head.split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


async def _refused_status(url: str, **kwargs: object) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as exc:
        async with connect(url, **kwargs):  # type: ignore[arg-type]
            pass
    return exc.value


async def test_plain_get_without_upgrade_is_400() -> None:
    async with backend() as b, proxy(make_config([b])) as url:
        answer = await raw_exchange(_port(url), b"GET /page HTTP/1.1\r\nHost: test\r\n\r\n")
    status, _ = _status_and_headers(answer)
    assert status == 400
    assert not b.requests  # no backend is contacted for a refused upgrade


async def test_wrong_version_is_426_naming_version_13() -> None:
    async with backend() as b, proxy(make_config([b])) as url:
        answer = await raw_exchange(_port(url), upgrade_request(version="8"))
    status, headers = _status_and_headers(answer)
    assert status == 426
    assert headers["sec-websocket-version"] == "13"
    assert not b.requests


async def test_missing_key_is_400() -> None:
    request = (
        b"GET / HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    async with backend() as b, proxy(make_config([b])) as url:
        answer = await raw_exchange(_port(url), request)
    assert _status_and_headers(answer)[0] == 400
    assert not b.requests


@pytest.mark.parametrize("complete", [True, False], ids=["whole-head", "head-never-ends"])
async def test_request_head_over_the_limit_is_431(complete: bool) -> None:
    padding = f"X-Padding: {'a' * 3000}\r\n"
    request = upgrade_request(extra=padding)
    if not complete:  # the limit must hold while the head is still arriving, too
        request = request[: -len(b"\r\n\r\n")] + b"\r\n" + padding.encode()
    async with backend() as b:
        config = make_config([b], limits={"max_request_head": "2KiB"})
        async with proxy(config) as url:
            answer = await raw_exchange(_port(url), request)
    assert _status_and_headers(answer)[0] == 431
    assert not b.requests


async def test_head_under_the_limit_passes() -> None:
    async with backend() as b:
        config = make_config([b], limits={"max_request_head": "2KiB"})
        async with proxy(config) as url, connect(
            url, additional_headers={"X-Padding": "a" * 1000}
        ) as ws:
            await ws.send("ok")
            assert await ws.recv() == "ok"


async def test_half_a_request_is_closed_after_handshake_timeout() -> None:
    async with backend() as b:
        config = make_config([b], limits={"handshake_timeout": "300ms"})
        async with proxy(config) as url, await anyio.connect_tcp(
            "127.0.0.1", _port(url)
        ) as stream:
            await stream.send(upgrade_request()[:40])
            received = b""
            with anyio.fail_after(5):  # generous: the timeout is 300 ms
                while True:
                    try:
                        received += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
    assert b"101" not in received
    assert not b.requests


async def test_max_connections_answers_503_with_retry_after() -> None:
    async with backend() as b:
        config = make_config([b], limits={"max_connections": 1})
        async with proxy(config) as url, connect(url) as first:
            refused = await _refused_status(url)
            assert refused.response.status_code == 503
            assert refused.response.headers["Retry-After"]
            await first.send("still here")  # the first is untouched
            assert await first.recv() == "still here"
    assert len(b.requests) == 1


async def test_max_connections_per_ip_answers_503_with_retry_after() -> None:
    async with backend() as b:
        config = make_config([b], limits={"max_connections_per_ip": 1})
        async with proxy(config) as url, connect(url) as first:
            refused = await _refused_status(url)
            assert refused.response.status_code == 503
            assert refused.response.headers["Retry-After"]
            await first.send("still here")
            assert await first.recv() == "still here"
    assert len(b.requests) == 1


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [("https://bad.example", False), ("https://good.example", True), (None, True)],
    ids=["bad", "good", "none"],
)
async def test_allowed_origins(origin: str | None, allowed: bool) -> None:
    async with backend() as b:
        config = make_config([b], allowed_origins=["https://good.example"])
        async with proxy(config) as url:
            if not allowed:
                refused = await _refused_status(url, origin=origin)
                assert refused.response.status_code == 403
                assert not b.requests
                return
            async with connect(url, origin=origin) as ws:  # type: ignore[arg-type]
                await ws.send("hi")
                assert await ws.recv() == "hi"
    assert b.requests[0][1].get("Origin") == origin


async def test_compression_off_removes_the_offer() -> None:
    async with (
        backend() as b,
        proxy(make_config([b], compression="off")) as url,
        connect(url) as ws,  # websockets offers permessage-deflate by default
    ):
        await ws.send("x" * 10_000)
        assert await ws.recv() == "x" * 10_000
        assert ws.protocol.extensions == []
    headers = b.requests[0][1]
    assert "Sec-WebSocket-Extensions" not in headers
    assert b.connections[0].protocol.extensions == []


async def test_compression_passthrough_negotiates_deflate_end_to_end() -> None:
    async with (
        backend() as b,
        proxy(make_config([b], compression="passthrough")) as url,
        connect(url) as ws,
    ):
        assert ws.protocol.extensions, "no extension negotiated through the proxy"
        assert b.connections[0].protocol.extensions
        for message in ["x" * 10_000, "héllo", b"\x00" * 70_000, ["frag", "ment"]]:
            await ws.send(message)  # type: ignore[arg-type]
            expected = "fragment" if isinstance(message, list) else message
            assert await ws.recv() == expected
    assert "permessage-deflate" in b.requests[0][1]["Sec-WebSocket-Extensions"]


async def test_trusted_proxy_keeps_the_forwarded_for_chain() -> None:
    async with backend() as b:
        config = make_config([b], trusted_proxies=["127.0.0.0/8"])
        async with proxy(config) as url, connect(
            url, additional_headers={"X-Forwarded-For": "203.0.113.9"}
        ):
            pass
    assert b.requests[0][1]["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
