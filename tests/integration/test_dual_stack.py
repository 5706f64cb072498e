"""``listen.host: "::"`` serves IPv6 and IPv4 clients on one port (dual stack).

An IPv4 client of a dual-stack socket shows up as ``::ffff:127.0.0.1``; the proxy
names it 127.0.0.1 in its limits, logs and X-Forwarded-For.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import anyio
import pytest
import trustme
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.integration.peers import backend, make_config, running_proxy
from tests.integration.peers import both_loops as anyio_backend  # noqa: F401

pytestmark = pytest.mark.anyio


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


requires_ipv6 = pytest.mark.skipif(
    not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)"
)




async def _echo(url: str, **kwargs: object) -> None:
    async with connect(url, open_timeout=10, **kwargs) as ws:  # type: ignore[arg-type]
        await ws.send("dual")
        assert await ws.recv() == "dual"


@requires_ipv6
async def test_wildcard_host_serves_ipv6_and_ipv4() -> None:
    async with backend() as b:
        config = make_config([b], listen={"host": "::"})
        async with running_proxy(config) as ctx:
            [(host, port)] = ctx.addresses
            assert host == "::"
            await _echo(f"ws://[::1]:{port}/")
            await _echo(f"ws://127.0.0.1:{port}/")
    forwarded = [headers["X-Forwarded-For"] for _, headers in b.requests]
    assert forwarded == ["::1", "127.0.0.1"]  # not ::ffff:127.0.0.1


@requires_ipv6
async def test_ipv4_clients_of_a_dual_stack_listener_share_one_per_ip_limit() -> None:
    async with backend() as b:
        config = make_config([b], listen={"host": "::"}, limits={"max_connections_per_ip": 1})
        async with running_proxy(config) as ctx:
            port = ctx.addresses[0][1]
            async with connect(f"ws://127.0.0.1:{port}/", open_timeout=10):
                [conn] = ctx.registry.connections.values()
                assert conn.client_ip == "127.0.0.1"
                with pytest.raises(InvalidStatus) as refused:
                    await _echo(f"ws://127.0.0.1:{port}/")
                assert refused.value.response.status_code == 503
                await _echo(f"ws://[::1]:{port}/")  # another address: its own count


@requires_ipv6
async def test_wildcard_host_serves_tls_on_both_families(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "::1")
    certfile, keyfile = tmp_path / "proxy.pem", tmp_path / "proxy.key"
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    async with backend() as b:
        tls = {"certfile": str(certfile), "keyfile": str(keyfile)}
        config = make_config([b], listen={"host": "::", "tls": tls},
                             limits={"max_connections_per_ip": 1})
        async with running_proxy(config) as ctx:
            port = ctx.addresses[0][1]
            await _echo(f"wss://[::1]:{port}/", ssl=client)
            await _echo(f"wss://127.0.0.1:{port}/", ssl=client)
            async with await anyio.connect_tcp("127.0.0.1", port):  # in its TLS handshake
                with pytest.raises((ConnectionError, ssl.SSLError)):  # its one slot is taken
                    await _echo(f"wss://127.0.0.1:{port}/", ssl=client)
    assert [headers["X-Forwarded-For"] for _, headers in b.requests] == ["::1", "127.0.0.1"]


async def _healthz(host: str, port: int) -> bytes:
    async with await anyio.connect_tcp(host, port) as stream:
        await stream.send(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        with anyio.fail_after(10):
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += await stream.receive()
        return answer


@requires_ipv6
async def test_admin_wildcard_host_serves_ipv6_and_ipv4() -> None:
    async with backend() as b:
        config = make_config([b], admin={"host": "::", "port": 0, "token": "secret"})
        async with running_proxy(config) as ctx:
            assert ctx.admin_address is not None
            port = ctx.admin_address[1]
            for host in ("::1", "127.0.0.1"):
                assert (await _healthz(host, port)).startswith(b"HTTP/1.1 200 "), host
