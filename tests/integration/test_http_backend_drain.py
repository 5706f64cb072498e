"""A backend drain covers plain HTTP (issue 16): exchanges in flight, idle pooled links.

Two real h11 backends (tests/integration/http_backend.py) behind a proxy in this event
loop with ``plain_http: proxy``. A long-poll is a ``/gate/NAME`` request the backend
answers only when the test releases the gate. The drain's schedule draws its moments
from core.schedule's ``random.Random``; the tests replace it with one that always says
the middle of a slot, so that the point of the one exchange is known (half the spread
after the drain's start) and every time check is a lower bound from that start.

Also here: a backend gone from the config drains its plain HTTP the same way, a
response already streaming at its point is cut, and the proxy's own drain counts a
request in flight (``GET /drain``) but lets it finish.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import anyio
import h11
import pytest

from tests.integration.http_backend import WAIT, HttpBackend, http_backend, http_client
from tests.integration.test_admin import admin
from tests.integration.test_plain_http import (
    first_to_arrive,
    http_config,
    plain_proxy,
    port_of,
    send_request_head,
)
from wsproxy.core import schedule
from wsproxy.supervisor import ProxyContext

pytestmark = pytest.mark.anyio


class Midpoints(random.Random):
    """Every close moment in the middle of its slot (shuffles stay random)."""

    def random(self) -> float:
        return 0.5


@pytest.fixture
def midpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedule, "random", SimpleNamespace(Random=Midpoints))


async def pooled_link_to(ctx: ProxyContext, backend: HttpBackend) -> None:
    """Plain requests, each on a client connection of its own, until one has been served
    by *backend*: its link to that backend then waits in the pool (given back before the
    answer's end reached the client)."""
    before = len(backend.requests)
    with anyio.fail_after(WAIT):
        for i in range(20):
            async with http_client(port_of(ctx)) as client:
                assert (await client.request("GET", f"/hello/pool-{i}")).status == 200
            if len(backend.requests) > before:
                return
    raise AssertionError(f"no request reached {backend.name} in 20")


async def drain_status(ctx: ProxyContext, query: str = "") -> dict[str, object]:
    answer = await admin(ctx, "GET", f"/drain{query}")
    assert answer.status == 200, answer
    status: dict[str, object] = answer.json()
    return status


async def test_a_backend_drain_ends_a_long_poll_at_its_point_then_finishes(
    midpoints: None,
) -> None:
    async with http_backend("b1") as b1, http_backend("b2") as b2, plain_proxy(
        [b1, b2], balance="round_robin"
    ) as ctx, http_client(port_of(ctx)) as poll:
        gates = {b.name: b.gate("poll") for b in (b1, b2)}
        await send_request_head(poll, "GET", "/gate/poll")
        name = await first_to_arrive(gates)
        drained, kept = (b1, b2) if name == "b1" else (b2, b1)
        state = ctx.balancer.backends[name]
        await pooled_link_to(ctx, drained)
        served = (len(drained.requests), len(kept.requests))

        started = anyio.current_time()
        answer = await admin(ctx, "POST", f"/backends/{name}/drain", json_body={"spread": "1s"})
        assert answer.status == 200, answer
        ended_at: list[float] = []
        finished: list[tuple[float, dict[str, object]]] = []

        async def wait_for_the_drain() -> None:
            status = await drain_status(ctx, "?wait=20s")
            finished.append((anyio.current_time(), status))

        async def wait_for_the_cut() -> None:
            assert await poll.closed_by_server()
            ended_at.append(anyio.current_time())

        with anyio.fail_after(WAIT + 20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_the_drain)
                tg.start_soon(wait_for_the_cut)
                # Meanwhile new requests go to the other backend only.
                for i in range(4):
                    async with http_client(port_of(ctx)) as other:
                        assert (await other.request("GET", f"/hello/after-{i}")).status == 200
        drain = ctx.drains[state]
        assert not gates[name].release.is_set()  # the backend never answered the poll

    point = started + 0.5  # the middle of the one slot of a 1 s spread
    # The long-poll's client connection closed at its point or after, not before...
    assert ended_at[0] >= point
    # ...and the drain was not finished before it: it counted the exchange as closed,
    # and the idle pooled link it closed at its start.
    done_at, status = finished[0]
    assert done_at >= point
    assert status["draining"] is False
    assert status["left"] == 0
    assert status["drains"] == [
        {"name": name, "left": 0, "closed": 2, "seconds_left": 0.0}
    ]
    assert drain.idle_closed == 1
    assert ctx.http.pool.idle(state) == 0
    assert (len(drained.requests), len(kept.requests)) == (served[0], served[1] + 4)


async def test_get_drain_counts_an_exchange_in_flight_until_it_ends(midpoints: None) -> None:
    async with http_backend("b1") as b1, http_backend("b2") as b2, plain_proxy(
        [b1, b2], balance="round_robin", drain={"spread": "60s", "timeout": "120s"}
    ) as ctx, http_client(port_of(ctx)) as poll:
        gates = {b.name: b.gate("poll") for b in (b1, b2)}
        await send_request_head(poll, "GET", "/gate/poll")
        name = await first_to_arrive(gates)
        answer = await admin(ctx, "POST", f"/backends/{name}/drain", json_body={})
        assert answer.status == 200, answer
        # Its point is 30 s away: until then GET /drain shows it left.
        status = await drain_status(ctx)
        assert status["draining"] is True
        assert status["drains"] == [
            {"name": name, "left": 1, "closed": 0, "seconds_left": status["seconds_left"]}
        ]
        # Answered before its point, the long-poll ends normally; then the drain is done.
        gates[name].release.set()
        reply = await poll.response_head()
        reply.body = await poll.read_body()
        done = await drain_status(ctx, "?wait=20s")
    assert (reply.status, reply.body) == (200, b"released /gate/poll\n")
    assert done["draining"] is False
    assert done["left"] == 0


async def test_the_proxy_drain_counts_a_request_in_flight_and_lets_it_finish() -> None:
    async with http_backend("b1") as b1, plain_proxy([b1]) as ctx, \
            http_client(port_of(ctx)) as client:
        gate = b1.gate("flight")
        await send_request_head(client, "GET", "/gate/flight")
        with anyio.fail_after(WAIT):
            await gate.arrived.wait()
        answer = await admin(ctx, "POST", "/drain", json_body={"spread": "1s"})
        assert answer.status == 200, answer
        status = await drain_status(ctx)
        # Not finished while the request is in flight: it is left, not closed.
        assert status["draining"] is True
        assert status["left"] == 1
        gate.release.set()
        reply = await client.response_head()
        reply.body = await client.read_body()
        done = await drain_status(ctx, "?wait=20s")
    assert (reply.status, reply.body) == (200, b"released /gate/flight\n")
    assert "close" in reply.tokens("connection")
    assert done["draining"] is False
    assert done["left"] == 0


async def test_a_backend_gone_from_the_config_ends_its_long_poll_at_its_point(
    midpoints: None,
) -> None:
    async with http_backend("b1") as b1, http_backend("b2") as b2, plain_proxy(
        [b1, b2], balance="round_robin"
    ) as ctx, http_client(port_of(ctx)) as poll:
        gates = {b.name: b.gate("poll") for b in (b1, b2)}
        await send_request_head(poll, "GET", "/gate/poll")
        name = await first_to_arrive(gates)
        kept = b2 if name == "b1" else b1
        started = anyio.current_time()
        ctx.apply_config(http_config([kept], balance="round_robin", drain={"spread": "1s"}))
        assert await poll.closed_by_server()
        ended = anyio.current_time()
        done = await drain_status(ctx, "?wait=20s")
    assert ended >= started + 0.5
    assert done["draining"] is False
    assert done["drains"] == []  # a removed backend's drain is shown until it is over


async def test_a_stream_still_open_at_its_point_is_cut_not_ended(midpoints: None) -> None:
    async with http_backend("b1") as b1, http_backend("b2") as b2, plain_proxy(
        [b1, b2], balance="round_robin"
    ) as ctx, http_client(port_of(ctx)) as stream:
        gates = {b.name: b.gate("stream") for b in (b1, b2)}
        await send_request_head(stream, "GET", "/trickle/stream")
        name = await first_to_arrive(gates)
        reply = await stream.response_head()
        assert await stream.body_chunk() == b"first\n"
        started = anyio.current_time()
        ctx.drain_backend(ctx.balancer.backends[name], spread=1.0)
        with pytest.raises(h11.RemoteProtocolError):  # a cut: no end of the body
            with anyio.fail_after(WAIT):
                await stream.body_chunk()
        ended = anyio.current_time()
        done = await drain_status(ctx, "?wait=20s")
    assert reply.status == 200
    assert ended >= started + 0.5
    assert done["draining"] is False
