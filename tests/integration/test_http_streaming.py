"""Streaming response bodies through ``plain_http: proxy`` (issue 14).

``http.response_timeout`` bounds the wait for a response's head; once the head is
relayed, a body that pauses between chunks (server-sent events, long-poll) is bounded
by ``http.stream_idle_timeout`` instead. Before issue 14 the response timeout bounded
every pause of the body too, so an event stream quieter than it was cut.

The backend is the real h11 server of http_backend.py; the clients are h11 on raw
sockets. Time is checked only as lower bounds; every wait has a generous ceiling.
"""

from __future__ import annotations

import anyio
import h11
import pytest
from structlog.testing import capture_logs

from tests.integration.http_backend import http_backend, http_client
from tests.integration.test_plain_http import plain_proxy, port_of, send_request_head

pytestmark = pytest.mark.anyio

#: A ceiling on waits that take a few seconds at most.
CEILING = 30.0


async def test_an_event_stream_quieter_than_response_timeout_is_relayed_whole() -> None:
    events, gap = 4, 0.7  # each pause longer than response_timeout
    async with http_backend() as b, plain_proxy(
        [b], http={"response_timeout": "300ms", "stream_idle_timeout": "20s"}
    ) as ctx, http_client(port_of(ctx)) as client:
        started = anyio.current_time()
        await send_request_head(client, "GET", f"/events?n={events}&gap_ms={int(gap * 1000)}")
        reply = await client.response_head()
        body = b""
        with anyio.fail_after(CEILING):
            while (chunk := await client.body_chunk()) is not None:
                body += chunk
        elapsed = anyio.current_time() - started
    assert reply.status == 200
    assert reply.get("content-type") == "text/event-stream"
    assert body == b"".join(f"data: event {i}\n\n".encode() for i in range(events))
    assert elapsed >= (events - 1) * gap  # well past response_timeout


async def test_a_stream_that_stalls_is_cut_after_stream_idle_timeout() -> None:
    async with http_backend() as b, plain_proxy(
        [b], http={"response_timeout": "20s", "stream_idle_timeout": "500ms"}
    ) as ctx, http_client(port_of(ctx)) as client:
        with capture_logs() as logs:
            # Before the request, so before the backend's first line: the proxy's idle
            # clock starts when that line reaches it, which the client sees later.
            first_at = anyio.current_time()
            await send_request_head(client, "GET", "/trickle/stalled")
            reply = await client.response_head()
            assert await client.body_chunk() == b"first\n"
            with pytest.raises(h11.RemoteProtocolError), anyio.fail_after(CEILING):
                await client.body_chunk()  # the body never ends: the connection does
            cut_after = anyio.current_time() - first_at
            with anyio.fail_after(CEILING):
                while not any(e["event"] == "http.request" for e in logs):  # noqa: ASYNC110
                    await anyio.sleep(0.01)  # logged as the proxy sees the socket go
        b.gate("stalled").release.set()
    assert reply.status == 200
    assert cut_after >= 0.5
    [request] = [e for e in logs if e["event"] == "http.request"]
    assert (request["status"], request["error"]) == (200, "stream_idle_timeout")


async def test_a_backend_that_never_sends_its_head_still_gets_response_timeout() -> None:
    async with http_backend() as b, plain_proxy(
        [b], http={"response_timeout": "300ms", "stream_idle_timeout": "20s"}
    ) as ctx, http_client(port_of(ctx)) as client:
        started = anyio.current_time()
        reply = await client.request("GET", "/gate/never")
        elapsed = anyio.current_time() - started
        b.gate("never").release.set()
    assert reply.status == 504
    assert elapsed >= 0.3
