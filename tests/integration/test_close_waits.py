"""The waits of a connection's end, which the sweeper watches (issue 18: no deadline is
armed for them, since most closes are answered at once): the backend's EOF after both
close frames went (§7.1.1: the server closes first, but not for ever), and the answer
to a close (heartbeat.timeout). Both close frames here take the relay protocols' way
(wsproxy.io.connection's receive_close).

Every wait is on an event (a frame, an EOF, the registry emptied), bounded.
"""

from __future__ import annotations

import time

import anyio
import pytest

from tests.integration.peers import make_config, running_proxy
from tests.integration.test_lifecycle import (
    WAIT,
    RawPeer,
    backend_dict,
    raw_backend,
    raw_client,
)
from wsproxy.core import frames as fr
from wsproxy.io.connection import UPSTREAM_EOF_WAIT
from wsproxy.supervisor import ProxyContext

pytestmark = pytest.mark.anyio


def port_of(ctx: ProxyContext) -> int:
    return ctx.addresses[0][1]


async def gone(ctx: ProxyContext) -> None:
    with anyio.fail_after(WAIT):
        while ctx.registry.connections:  # noqa: ASYNC110 - no event for the registry
            await anyio.sleep(0.01)


async def test_a_backend_that_keeps_its_socket_after_the_close_is_closed_after_the_wait() -> None:
    answered_at: list[float] = []
    eof_at: list[float] = []

    async def keeps_its_socket(peer: RawPeer) -> None:
        frame = await peer.next_frame()
        assert frame is not None
        assert frame.close == (1000, "bye")
        await peer.send_close(1000, "ok")
        answered_at.append(time.monotonic())
        while await peer.next_frame() is not None:
            pass  # nothing more comes: the proxy closes its end after the wait
        eof_at.append(time.monotonic())

    async with raw_backend(keeps_its_socket) as port, running_proxy(make_config(
        [backend_dict("b", port)], heartbeat={"interval": "20s", "timeout": "4s"},
    )) as ctx:
        async with raw_client(port_of(ctx)) as client:
            await client.send_close(1000, "bye")
            with anyio.fail_after(WAIT):
                answer = await client.next_frame()
                assert answer is not None
                assert answer.close == (1000, "ok")
                assert await client.next_frame() is None  # the proxy closed the client
        await gone(ctx)
    assert eof_at
    assert eof_at[0] - answered_at[0] >= UPSTREAM_EOF_WAIT - 0.05  # (the loop's clock)


async def test_a_close_the_backend_never_answers_times_out_through_the_sweeper() -> None:
    """The client's close relayed, no answer: after heartbeat.timeout the client gets its
    answer from the proxy and both sockets close."""
    async def deaf(peer: RawPeer) -> None:
        while await peer.next_frame() is not None:
            pass

    async with raw_backend(deaf) as port, running_proxy(make_config(
        [backend_dict("deaf", port)], heartbeat={"interval": "20s", "timeout": "1s"},
    )) as ctx:
        async with raw_client(port_of(ctx)) as client:
            started = time.monotonic()
            await client.send_close(4000, "later")
            with anyio.fail_after(WAIT):
                answer = await client.next_frame()
            assert answer is not None
            assert answer.opcode == fr.CLOSE
            assert answer.close == (4000, "later")
            assert time.monotonic() - started >= 1.0 - 0.05
        await gone(ctx)
