"""TLS handshakes on the listener are bounded and counted (io/tls_accept.py).

A client that opens TCP to a ``listen.tls`` listener and sends nothing is closed at
``limits.handshake_timeout`` (not the event loop's 60 s default), and while it is in
its handshake it counts in ``max_connections`` and ``max_connections_per_ip``. Every
test runs on the standard loop and on uvloop (the CLI's default where installed).
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.tls import TLSStream
from websockets.asyncio.client import connect

from tests.integration.peers import backend, make_config, running_proxy
from tests.integration.peers import both_loops as anyio_backend  # noqa: F401
from wsproxy.supervisor import ProxyContext

pytestmark = pytest.mark.anyio

#: Short enough to keep the tests quick; long enough that a loaded machine connects
#: the sockets of one test well within it (see the limit tests).
TIMEOUT = 1.0  # the normal client's handshake beside the stalled ones faces it too
LIMIT_TIMEOUT = 3.0
#: A ceiling for "the proxy closes it", far from the loop's 60 s default.
CEILING = 10.0
#: uvloop's timers have a resolution of 1 ms (libuv): a close may come that much early.
CLOCK_SLACK = 0.002




@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "proxy.pem", tmp_path / "proxy.key"
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    return {"certfile": str(certfile), "keyfile": str(keyfile)}


@pytest.fixture
def client_ssl(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    return context


@asynccontextmanager
async def tls_proxy(tls_files: dict[str, str], **limits: Any) -> AsyncIterator[ProxyContext]:
    """An echo backend behind a proxy with a TLS listener and these ``limits``."""
    async with backend() as b:
        config = make_config([b], listen={"tls": tls_files}, limits=limits)
        async with running_proxy(config) as ctx:
            yield ctx


def wss_url(ctx: ProxyContext) -> str:
    return f"wss://127.0.0.1:{ctx.addresses[0][1]}/"


async def echo(ctx: ProxyContext, context: ssl.SSLContext, **kwargs: Any) -> None:
    async with connect(wss_url(ctx), ssl=context, open_timeout=CEILING, **kwargs) as ws:
        await ws.send("through tls")
        assert await ws.recv() == "through tls"


async def stalled(stack: AsyncExitStack, ctx: ProxyContext) -> tuple[SocketStream, float]:
    """A TCP connection to the TLS listener that never sends its ClientHello, and
    when it was opened (on the loop's clock)."""
    opened = anyio.current_time()
    stream = await stack.enter_async_context(
        await anyio.connect_tcp("127.0.0.1", ctx.addresses[0][1])
    )
    return stream, opened


async def closed_after(stream: SocketStream, opened: float) -> float:
    """Wait (at most CEILING) for the proxy to close *stream*: seconds since *opened*."""
    with anyio.fail_after(CEILING):
        try:
            data = await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            return anyio.current_time() - opened
    raise AssertionError(f"the proxy sent {data!r} to a client that sent no ClientHello")


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll the proxy's bookkeeping (in this process) until *condition*, bounded."""
    with anyio.move_on_after(CEILING):
        while not condition():  # noqa: ASYNC110 - the registry has no event to wait on
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"not within {CEILING} s: {what}")


async def refused(ctx: ProxyContext, context: ssl.SSLContext, **kwargs: Any) -> None:
    """A wss client is closed before its TLS handshake could finish."""
    with pytest.raises((ConnectionError, ssl.SSLError)):  # a reset, or an EOF in the handshake
        await echo(ctx, context, **kwargs)


async def test_stalled_handshakes_are_closed_at_handshake_timeout(
    tls_files: dict[str, str], client_ssl: ssl.SSLContext
) -> None:
    async with tls_proxy(tls_files, handshake_timeout=TIMEOUT) as ctx, AsyncExitStack() as stack:
        sockets = [await stalled(stack, ctx) for _ in range(5)]
        await echo(ctx, client_ssl)  # served beside them
        waited = [await closed_after(stream, opened) for stream, opened in sockets]
        assert min(waited) >= TIMEOUT - CLOCK_SLACK, waited
        await wait_until(lambda: ctx.metrics.handshake_failures["timeout"] == 5, "counted")
        assert ctx.registry.handshakes == 0  # every slot given back
        await echo(ctx, client_ssl)


async def test_tls_and_the_request_share_one_handshake_timeout(
    tls_files: dict[str, str], client_ssl: ssl.SSLContext
) -> None:
    """A client slow to start TLS has only what is left for its request."""
    timeout, delay = 5.0, 1.0
    async with tls_proxy(tls_files, handshake_timeout=timeout) as ctx:
        before_tcp = anyio.current_time()
        async with await anyio.connect_tcp("127.0.0.1", ctx.addresses[0][1]) as tcp:
            await anyio.sleep(delay)  # the slow client: its ClientHello comes late
            after_tls = anyio.current_time()
            async with await TLSStream.wrap(
                tcp, hostname="127.0.0.1", ssl_context=client_ssl, standard_compatible=False
            ):
                await wait_until(lambda: len(ctx.registry) == 1, "handed over")
                [conn] = ctx.registry.connections.values()
                assert conn._timer  # the request's deadline (wsproxy.io.deadlines)
                # The deadline is the accept's plus handshake_timeout, not a fresh one.
                assert before_tcp + timeout <= conn._timer_at <= after_tls + timeout - delay / 2


async def test_handshakes_count_in_max_connections(
    tls_files: dict[str, str], client_ssl: ssl.SSLContext
) -> None:
    async with (
        tls_proxy(tls_files, handshake_timeout=LIMIT_TIMEOUT, max_connections=2) as ctx,
        AsyncExitStack() as stack,
    ):
        sockets = [await stalled(stack, ctx) for _ in range(2)]
        await refused(ctx, client_ssl)
        assert ctx.registry.handshakes == 2, "the stalled sockets timed out too early"
        for stream, opened in sockets:
            assert await closed_after(stream, opened) >= LIMIT_TIMEOUT - CLOCK_SLACK
        await wait_until(lambda: ctx.registry.handshakes == 0, "slots given back")
        await echo(ctx, client_ssl)
        assert ctx.metrics.handshake_failures["connection_limit"] == 1
        assert ctx.metrics.handshake_failures["timeout"] == 2


async def test_handshakes_count_in_max_connections_per_ip(
    tls_files: dict[str, str], client_ssl: ssl.SSLContext
) -> None:
    async with (
        tls_proxy(tls_files, handshake_timeout=LIMIT_TIMEOUT, max_connections_per_ip=2) as ctx,
        AsyncExitStack() as stack,
    ):
        sockets = [await stalled(stack, ctx) for _ in range(2)]  # from 127.0.0.1
        await refused(ctx, client_ssl)
        await echo(ctx, client_ssl, local_addr=("127.0.0.2", 0))  # another address
        assert ctx.registry.handshakes == 2, "the stalled sockets timed out too early"
        for stream, opened in sockets:
            assert await closed_after(stream, opened) >= LIMIT_TIMEOUT - CLOCK_SLACK
        await wait_until(lambda: ctx.registry.handshakes == 0, "slots given back")
        await echo(ctx, client_ssl)


async def test_every_way_a_handshake_ends_gives_its_slot_back(
    tls_files: dict[str, str], client_ssl: ssl.SSLContext
) -> None:
    """Not TLS at all, an EOF, a reset, a success: with max_connections 1, each of
    them in turn would lock the next one out if its slot leaked."""
    async with tls_proxy(tls_files, handshake_timeout=CEILING, max_connections=1) as ctx:
        port = ctx.addresses[0][1]
        async with await anyio.connect_tcp("127.0.0.1", port) as plain:
            await plain.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not a ClientHello
            await closed_after(plain, anyio.current_time())
        await wait_until(lambda: ctx.registry.handshakes == 0, "bad ClientHello")
        async with await anyio.connect_tcp("127.0.0.1", port) as half_closed:
            await wait_until(lambda: ctx.registry.handshakes == 1, "accepted")
            await half_closed.send_eof()
            await closed_after(half_closed, anyio.current_time())
        await wait_until(lambda: ctx.registry.handshakes == 0, "EOF")
        async with await anyio.connect_tcp("127.0.0.1", port) as reset:
            await wait_until(lambda: ctx.registry.handshakes == 1, "accepted")
            raw = reset.extra(SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await wait_until(lambda: ctx.registry.handshakes == 0, "reset")
        for _ in range(3):
            await echo(ctx, client_ssl)  # a success gives it back too
        await wait_until(lambda: len(ctx.registry) == 0, "connections ended")
        failures = ctx.metrics.handshake_failures
        assert (failures["tls_handshake"], failures["client_gone"]) == (1, 2)
        assert failures["connection_limit"] == 0
