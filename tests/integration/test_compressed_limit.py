"""max_message_size under ``compression: passthrough`` through a real proxy (issue 14).

A `websockets` client and an echo backend negotiate permessage-deflate through the
proxy (websockets offers and accepts it by default). Incompressible bytes from a fixed
seed come out of deflate a little longer than they went in: a message at the limit
must still pass both ways; one well over it is closed with 1009 on both legs.
"""

from __future__ import annotations

import random

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.integration.peers import backend, make_config, proxy

pytestmark = pytest.mark.anyio

LIMIT = 64 * 1024


async def test_an_incompressible_message_at_the_limit_passes_both_ways() -> None:
    message = random.Random(1).randbytes(LIMIT)
    async with (
        backend() as b,
        proxy(make_config([b], compression="passthrough",
                          limits={"max_message_size": LIMIT})) as url,
        connect(url) as ws,
    ):
        assert ws.protocol.extensions, "no permessage-deflate on the client's leg"
        assert b.connections[0].protocol.extensions, "none on the backend's leg"
        await ws.send(message)
        assert await ws.recv() == message  # to the backend and back, compressed each way
        await ws.send(message)
        assert await ws.recv() == message  # and again, with the contexts taken over


async def test_a_message_well_over_the_limit_is_still_1009() -> None:
    message = random.Random(2).randbytes(LIMIT * 5 // 4)  # over deflate's worst case
    async with backend() as b:
        config = make_config([b], compression="passthrough", limits={"max_message_size": LIMIT})
        async with proxy(config) as url, connect(url) as ws:
            await ws.send(message)
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 1009
        await b.connections[0].wait_closed()
        assert b.connections[0].close_code == 1009
