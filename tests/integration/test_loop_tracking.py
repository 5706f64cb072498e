"""uvloop's record of transports by descriptor, made free (wsproxy.io.loop_tracking):
found on a real uvloop loop, left alone on asyncio's, and transports still work."""

from __future__ import annotations

import asyncio
import gc

import uvloop

from wsproxy.io.loop_tracking import _Untracked, stop_tracking_transports


def _records(loop: asyncio.AbstractEventLoop) -> list[_Untracked]:
    return [held for held in gc.get_referents(loop) if isinstance(held, _Untracked)]


def test_a_uvloop_loop_keeps_no_record_of_its_transports() -> None:
    async def echo_once() -> bytes:
        loop = asyncio.get_running_loop()
        assert stop_tracking_transports(loop)

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readexactly(5))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        answer = await reader.readexactly(5)
        # Two live transports (the client's, the server's), none recorded.
        records = _records(loop)
        assert len(records) == 1
        assert len(records[0]) == 0
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return answer

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(echo_once()) == b"hello"


def test_an_asyncio_loop_is_left_as_it_is() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert not stop_tracking_transports(loop)
        assert _records(loop) == []
    finally:
        loop.close()
