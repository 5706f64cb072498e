"""TLS on both legs, with certificates from a throwaway CA (trustme).

The listener terminates TLS for ``wss://`` clients (``listen.tls``); ``wss://``
backends are verified against ``backend_tls`` (CA file, ``verify``, ``server_name``)
and may ask the proxy for a client certificate.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trustme
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.integration.peers import Backend, backend, make_config, proxy

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def _write_cert(cert: trustme.LeafCert, directory: Path, stem: str) -> tuple[str, str]:
    certfile, keyfile = directory / f"{stem}.pem", directory / f"{stem}.key"
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    return str(certfile), str(keyfile)


def _server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


def _client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    return context


@asynccontextmanager
async def _through_wss_backend(
    context: ssl.SSLContext, backend_tls: dict[str, object]
) -> AsyncIterator[tuple[Backend, str]]:
    """A ``wss://`` backend serving with *context*, and a plain proxy in front of it."""
    async with (
        backend(ssl_context=context) as b,
        proxy(make_config([b], backend_tls=backend_tls)) as url,
    ):
        yield b, url


async def _echo_once(url: str, **kwargs: object) -> None:
    async with connect(url, **kwargs) as ws:  # type: ignore[arg-type]
        await ws.send("through tls")
        assert await ws.recv() == "through tls"


async def _status(url: str) -> int:
    with pytest.raises(InvalidStatus) as exc:
        async with connect(url):
            pass
    return exc.value.response.status_code


async def test_listener_tls_serves_wss_clients(ca: trustme.CA, tmp_path: Path) -> None:
    certfile, keyfile = _write_cert(ca.issue_cert("127.0.0.1", "localhost"), tmp_path, "proxy")
    async with backend() as b:
        config = make_config([b], listen={"tls": {"certfile": certfile, "keyfile": keyfile}})
        async with proxy(config, scheme="wss") as url:
            await _echo_once(url, ssl=_client_context(ca))
    assert b.requests[0][1]["X-Forwarded-Proto"] == "https"


async def test_wss_backend_verified_with_ca_file(ca: trustme.CA, ca_file: str) -> None:
    context = _server_context(ca.issue_cert("127.0.0.1", "localhost"))
    async with _through_wss_backend(context, {"ca_file": ca_file}) as (b, url):
        assert b.url.startswith("wss://")
        await _echo_once(url)


async def test_wss_backend_unknown_to_system_cas_is_502(ca: trustme.CA) -> None:
    context = _server_context(ca.issue_cert("127.0.0.1", "localhost"))
    async with _through_wss_backend(context, {}) as (b, url):
        assert await _status(url) == 502
    assert not b.requests  # the TLS handshake failed before any HTTP


async def test_wss_backend_without_verification(ca: trustme.CA) -> None:
    context = _server_context(ca.issue_cert("127.0.0.1", "localhost"))
    async with _through_wss_backend(context, {"verify": False}) as (_, url):
        await _echo_once(url)


@pytest.mark.parametrize("server_name", ["backend.internal", None])
async def test_server_name_verifies_a_backend_dialled_by_ip(
    ca: trustme.CA, ca_file: str, server_name: str | None
) -> None:
    context = _server_context(ca.issue_cert("backend.internal"))  # not valid for 127.0.0.1
    tls: dict[str, object] = {"ca_file": ca_file, "server_name": server_name}
    async with _through_wss_backend(context, tls) as (_, url):
        if server_name is None:
            assert await _status(url) == 502  # the IP is not in the certificate
        else:
            await _echo_once(url)


@pytest.mark.parametrize("with_client_cert", [True, False])
async def test_backend_requiring_a_client_certificate(
    ca: trustme.CA, ca_file: str, tmp_path: Path, with_client_cert: bool
) -> None:
    context = _server_context(ca.issue_cert("127.0.0.1"))
    context.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(context)
    tls: dict[str, object] = {"ca_file": ca_file}
    if with_client_cert:
        certfile, keyfile = _write_cert(ca.issue_cert("wsproxy-client"), tmp_path, "client")
        tls |= {"certfile": certfile, "keyfile": keyfile}
    async with _through_wss_backend(context, tls) as (_, url):
        if with_client_cert:
            await _echo_once(url)
        else:
            assert await _status(url) == 502
