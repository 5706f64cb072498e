"""listen.proxy_protocol: the client address comes from a PROXY v1/v2 header."""

from __future__ import annotations

import ipaddress
import struct

import anyio
import pytest

from tests.integration.peers import (
    backend,
    make_config,
    raw_exchange,
    running_proxy,
    upgrade_request,
)
from wsproxy.core.proxy_protocol import V2_SIGNATURE

pytestmark = pytest.mark.anyio
PROXIED = {"proxy_protocol": True}


def v2_header(client: str, port: int = 40000) -> bytes:
    addresses = ipaddress.ip_address(client).packed + ipaddress.ip_address("10.0.0.1").packed
    payload = addresses + struct.pack("!HH", port, 8080)
    return V2_SIGNATURE + bytes((0x21, 0x11)) + struct.pack("!H", len(payload)) + payload


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 8080\r\n",
        v2_header("203.0.113.7"),
        # An IPv4-mapped address is the IPv4 client it stands for.
        b"PROXY TCP6 ::ffff:203.0.113.7 ::1 40000 8080\r\n",
    ],
)
async def test_the_header_sets_the_client_address(header: bytes) -> None:
    async with backend() as b, running_proxy(make_config([b], listen=PROXIED)) as ctx:
        answer = await raw_exchange(
            ctx.addresses[0][1], header + upgrade_request("/"), read_until_eof=False
        )
    assert answer.startswith(b"HTTP/1.1 101 ")
    _, headers = b.requests[0]
    assert headers["X-Forwarded-For"] == "203.0.113.7"


async def test_per_ip_limits_count_the_address_in_the_header() -> None:
    async with backend() as b:
        config = make_config([b], listen={"proxy_protocol": True},
                             limits={"max_connections_per_ip": 1})
        async with running_proxy(config) as ctx:
            port = ctx.addresses[0][1]
            same = b"PROXY TCP4 198.51.100.1 10.0.0.1 1 2\r\n"
            other = b"PROXY TCP4 198.51.100.2 10.0.0.1 1 2\r\n"
            async with await anyio.connect_tcp("127.0.0.1", port) as held:
                await held.send(same + upgrade_request())
                with anyio.fail_after(5):
                    assert (await held.receive()).startswith(b"HTTP/1.1 101 ")
                refused = await raw_exchange(port, same + upgrade_request())
                allowed = await raw_exchange(port, other + upgrade_request(),
                                             read_until_eof=False)
    assert refused.startswith(b"HTTP/1.1 503 ")
    assert allowed.startswith(b"HTTP/1.1 101 ")


async def test_a_request_without_the_header_is_dropped() -> None:
    async with backend() as b, running_proxy(make_config([b], listen=PROXIED)) as ctx:
        answer = await raw_exchange(ctx.addresses[0][1], upgrade_request())
    assert answer == b""  # closed: no header, nothing sensible to answer
    assert b.requests == []
